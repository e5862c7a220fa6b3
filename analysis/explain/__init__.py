"""Explainability with ground truth: where in the image, and which words, a pair's score comes from.

    gradcam          Grad-CAM (Selvaraju et al. 2017) of the pair's logit on the vision tower's
                     last spatial activation: a CNN's final feature map, a ViT's patch tokens
                     entering its last block (gradcam.py)
    relevance        Chefer et al. 2021's gradient-weighted attention relevance, ViT towers only
                     (relevance.py)
    alignment        word-patch alignment: each word's cosine to each patch, in FILIP's token-wise
                     space, or for other models through the towers' global projections (alignment.py)

Text side: leave-one-word-out importance of each caption word (words.py). The pointing game on
ShapesWorld scores every map against the object a query names (pointing.py); ``command.py`` is
``python -m analysis explain``.
"""

from analysis.explain.maps import METHODS, available_methods, query_maps

__all__ = ["METHODS", "available_methods", "query_maps"]
