"""Evaluation suites: what the analysis measures a checkpoint on.

A suite is a plain record (``base.py``) over a torch ``Dataset`` of raw images (PIL images or
uint8 [3, H, W] tensors); the checkpoint's own image transform turns them into model input.
Each data format has one small module; ``load_suites`` resolves command-line specs.
"""

from datamodules.suites.base import ClassificationSuite, ProbeSuite, RetrievalSuite, Suite

__all__ = ["ClassificationSuite", "ProbeSuite", "RetrievalSuite", "Suite"]
