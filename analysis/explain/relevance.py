"""Gradient-weighted attention relevance (Chefer et al. 2021, "Generic Attention-model
Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers", arXiv 2103.15679,
eq. 5-6 for self-attention; official code hila-chefer/Transformer-MM-Explainability, its CLIP
notebook's ``interpret``): with A_b the attention probabilities of block b ([heads, N, N]) and
y the pair's logit,

    Abar_b = mean over heads of (dy/dA_b * A_b)^+          (eq. 5)
    R = I;  for each block in order:  R = R + Abar_b R      (eq. 6)
    relevance of patch p = R[cls, p]

The rows of R are the output tokens the score reads: the class token under CLIP's class-token
pooling; every patch under average pooling and under FILIP's token-wise score, which never reads
the class token (relevance is then the mean of R's patch rows).

Chosen over attention rollout (Abnar and Zuidema 2020): rollout multiplies the attention maps
alone, so it is the same for every caption and cannot point at the object a caption names; the
gradient makes relevance caption-specific, which a pointing game needs.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from analysis.explain.target import pair_logits, patch_grid, without_checkpointing
from common.errors import UserError
from variants.module import ContrastiveModule
from variants.towers import Encoded


@runtime_checkable
class AttentionLayer(Protocol):
    """A timm attention layer: its probabilities pass through ``attn_drop`` unless ``fused_attn``."""

    fused_attn: bool
    attn_drop: torch.nn.Module


def attention_layers(model: ContrastiveModule) -> list[AttentionLayer]:
    """The vision tower's timm attention layers, in forward order; a UserError when there are none."""
    backbone = model.vision_tower.backbone
    blocks = getattr(backbone, "blocks", None) or []
    found = [attn for block in blocks if hasattr(attn := getattr(block, "attn", None), "fused_attn")]
    layers = [layer for layer in found if isinstance(layer, AttentionLayer)]  # with attn_drop too: all, or refused
    if not layers or len(layers) < len(found):
        raise UserError(
            f"relevance needs a ViT vision tower (timm attention blocks); "
            f"{getattr(model.vision_tower, 'model_name', type(backbone).__name__)} has none: use --method gradcam"
        )
    pool, prefix = getattr(backbone, "global_pool", "token"), int(getattr(backbone, "num_prefix_tokens", 0))
    if not (pool == "avg" or (pool == "token" and prefix > 0)):
        raise UserError(
            f"relevance reads a class token or an average pool; this ViT pools with {pool!r}: use --method gradcam"
        )
    return layers


def relevance(model: ContrastiveModule, images: torch.Tensor, texts: Encoded) -> torch.Tensor:
    """[B, h, w] relevance of each image's patches to its pair's logit."""
    layers = attention_layers(model)
    attentions: list[torch.Tensor] = []
    saved = [(layer, layer.fused_attn, getattr(layer, "attention_kernel", None)) for layer in layers]
    handles = [layer.attn_drop.register_forward_hook(lambda m, args, out: attentions.append(out)) for layer in layers]
    try:
        for layer in layers:  # the probabilities exist only in the explicit kernel (not in the fused one)
            layer.fused_attn = False
            if hasattr(layer, "attention_kernel"):
                layer.attention_kernel = "explicit"
        with torch.enable_grad(), without_checkpointing(model):
            images = images.detach().float().requires_grad_(True)
            record = model.image_record(images, tokens="image_tokens" in model.scoring_needs)
            logits = pair_logits(model, record, texts)
            forward = tuple(attentions)
            gradients = torch.autograd.grad(logits.sum(), forward)
    finally:
        for handle in handles:
            handle.remove()
        for layer, fused, kernel in saved:
            layer.fused_attn = fused
            if kernel is not None and hasattr(layer, "attention_kernel"):  # the suite's own kernel switch
                layer.attention_kernel = kernel
    batch, tokens = forward[0].shape[0], forward[0].shape[-1]
    relevance_map = torch.eye(tokens, device=forward[0].device).expand(batch, tokens, tokens)
    for attention, gradient in zip(forward, gradients, strict=True):
        weighted = (gradient.float() * attention.detach().float()).clamp(min=0).mean(dim=1)  # eq. 5
        relevance_map = relevance_map + weighted @ relevance_map  # eq. 6
    backbone = model.vision_tower.backbone
    prefix = int(getattr(backbone, "num_prefix_tokens", 0))
    reads_patches = "image_tokens" in model.scoring_needs  # a token-wise score (FILIP) reads no class token
    if getattr(backbone, "global_pool", "token") == "token" and not reads_patches:
        patches = relevance_map[:, 0, prefix:]
    else:
        patches = relevance_map[:, prefix:, prefix:].mean(dim=1)
    return patch_grid(patches, "relevance")
