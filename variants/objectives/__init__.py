"""Objective terms: one file per term, selected in YAML by ``class_path``.

CLIP = [InfoNCE]; SigLIP = [Sigmoid]; FILIP = [TokenwiseInfoNCE]; CyCLIP = [InfoNCE, Cyclic];
SLIP = [InfoNCE, SimCLR]; modality alignment = [InfoNCE, MMD] or [InfoNCE, Adversarial];
DeCLIP = [MultiViewInfoNCE, SimSiam, MaskedLanguageModel, NearestNeighbourInfoNCE];
DeFILIP = DeCLIP + [TokenwiseInfoNCE].
"""

from variants.objectives.adversarial import Adversarial
from variants.objectives.base import Term
from variants.objectives.cyclic import Cyclic
from variants.objectives.infonce import InfoNCE
from variants.objectives.masked_language import MaskedLanguageModel
from variants.objectives.mmd import MMD
from variants.objectives.multiview import MultiViewInfoNCE
from variants.objectives.nearest_neighbour import NearestNeighbourInfoNCE
from variants.objectives.sigmoid import Sigmoid
from variants.objectives.simclr import SimCLR
from variants.objectives.simsiam import SimSiam
from variants.objectives.tokenwise import TokenwiseInfoNCE

__all__ = [
    "MMD",
    "Adversarial",
    "Cyclic",
    "InfoNCE",
    "MaskedLanguageModel",
    "MultiViewInfoNCE",
    "NearestNeighbourInfoNCE",
    "Sigmoid",
    "SimCLR",
    "SimSiam",
    "Term",
    "TokenwiseInfoNCE",
]
