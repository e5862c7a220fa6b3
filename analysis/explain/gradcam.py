"""Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", arXiv 1610.02391, eq. 1-2) of an image-caption pair's logit y:

    alpha_c = mean over positions (i, j) of dy / dA_c[i, j]      (channel weights, eq. 1)
    L = ReLU( sum_c alpha_c A_c )                                 (the map, eq. 2)

A is the vision tower's last spatial activation: a CNN's final feature map (the input of timm's
global pool), or for a ViT the patch tokens entering its last block (pytorch-grad-cam hooks that
block's first LayerNorm, whose output is these tokens normalised; after the block, under
class-token pooling, the patch tokens no longer reach the output and their gradient is zero).
"""

from __future__ import annotations

import torch
from torch import nn

from analysis.explain.target import pair_logits, patch_grid, without_checkpointing
from common.errors import UserError
from variants.module import ContrastiveModule
from variants.towers import Encoded


def gradcam_layer(model: ContrastiveModule) -> tuple[nn.Module, str]:
    """(the module whose input is A, "map" for a [B, C, h, w] feature map or "tokens" for ViT tokens)."""
    backbone = model.vision_tower.backbone
    blocks = getattr(backbone, "blocks", None)
    if isinstance(blocks, nn.Sequential | nn.ModuleList) and len(blocks) and hasattr(backbone, "num_prefix_tokens"):
        return blocks[-1], "tokens"
    pool = next((m for name, m in backbone.named_modules() if name.split(".")[-1] == "global_pool"), None)
    if isinstance(pool, nn.Module):
        return pool, "map"
    raise UserError(
        f"gradcam needs a spatial map, and the vision tower {getattr(model.vision_tower, 'model_name', '?')} exposes "
        "none (no timm global_pool module nor ViT blocks): use a timm CNN or ViT tower"
    )


def gradcam(model: ContrastiveModule, images: torch.Tensor, texts: Encoded) -> torch.Tensor:
    """[B, h, w] Grad-CAM of each image with its text (``texts``: the encoded captions, row b with image b)."""
    layer, kind = gradcam_layer(model)
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        with torch.enable_grad(), without_checkpointing(model):
            images = images.detach().float().requires_grad_(True)  # the weights are frozen: grads flow via the input
            record = model.image_record(images, tokens="image_tokens" in model.scoring_needs)
            logits = pair_logits(model, record, texts)
            if len(captured) != 1:
                raise UserError(
                    f"gradcam: the hooked layer ran {len(captured)} times in one forward, not once; "
                    "this tower is not a plain CNN or ViT: use --method alignment"
                )
            (gradient,) = torch.autograd.grad(logits.sum(), captured[0])
            activation = captured[0]
    finally:
        handle.remove()
    activation, gradient = activation.detach().float(), gradient.float()
    if kind == "map":
        if activation.ndim != 4:
            raise UserError(
                f"gradcam: the vision tower's pooled map has shape {tuple(activation.shape)}, not [B, C, h, w]: "
                "use --method alignment"
            )
        weights = gradient.mean(dim=(2, 3), keepdim=True)  # eq. 1
        return (weights * activation).sum(dim=1).clamp(min=0)  # eq. 2
    prefix = int(getattr(model.vision_tower.backbone, "num_prefix_tokens", 0))
    tokens, gradient = activation[:, prefix:], gradient[:, prefix:]
    weights = gradient.mean(dim=1, keepdim=True)
    return patch_grid((weights * tokens).sum(dim=-1).clamp(min=0), "gradcam")
