"""Objective terms: one file per term, selected in YAML by ``class_path``."""

from variants.objectives.base import Term
from variants.objectives.infonce import InfoNCE

__all__ = ["InfoNCE", "Term"]
