"""The encoders: a vision tower over any timm backbone and a CLIP-style text transformer.

Both return L2-normalised global embeddings of size ``embed_dim``; on request they also return
token-level features (unprojected, at the backbone's width) for token-wise terms such as FILIP.
What a step computes is collected in an :class:`Encoded` record and handed to every term.
"""

from __future__ import annotations

import difflib
from dataclasses import fields
from functools import partial
from pathlib import Path
from typing import Any, Literal, cast

import timm
import torch
import torch.nn.functional as F
from timm.layers import Mlp, get_act_layer
from timm.models.vision_transformer import Attention, Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from common.errors import UserError, one_line
from common.records import Encoded, TextEncoder, TowerOutput

__all__ = ["Encoded", "TextEncoder", "TextTower", "TowerOutput", "VisionTower", "check_context"]

#: What a term may list in ``Term.needs``: the fields of :class:`Encoded` that are computed only
#: when asked for ("text_tokens" brings "text_mask" with it).
OPTIONAL_FIELDS = frozenset(f.name for f in fields(Encoded)) - {"image", "text", "text_mask"}


AttentionKernel = Literal["auto", "fused", "explicit"]


def use_attention_kernel(module: nn.Module, kernel: AttentionKernel) -> None:
    """Choose how every timm attention layer inside ``module`` computes softmax(QK^T / sqrt(d)) V.

    "fused" calls ``F.scaled_dot_product_attention`` (flash kernels); "explicit" runs the two
    matmuls and the softmax as separate ops (the same math; under bf16 the scores are rounded to
    bf16 before the softmax, as in any unfused bf16 attention). "auto" picks per call: explicit on
    a CPU in bf16/fp16 (autocast or bf16 weights), fused everywhere else: the CPU flash kernel's
    backward is the slow part of a bf16 step there, while in fp32 the two are close
    (benchmarks/RESULTS.md has the measurements).
    Timm layers are those with a ``fused_attn`` switch (ViT, EVA, Swin, ...); a CNN has none.
    """
    if kernel not in ("auto", "fused", "explicit"):
        raise UserError(f"unknown attention kernel '{kernel}'; use 'auto', 'fused' or 'explicit'")
    layers = [layer for layer in module.modules() if hasattr(layer, "fused_attn")]
    if kernel != "auto" and not layers:
        raise UserError(f"attention='{kernel}' but the tower has no timm attention layer to set; leave it 'auto'")
    for layer in layers:
        if not hasattr(layer, "attention_kernel"):  # one hook per layer; a later call only resets the choice
            layer.register_forward_pre_hook(_pick_attention_kernel, with_kwargs=True)
        # timm's own attribute and ours, set on a layer typed only as nn.Module
        setattr(layer, "attention_kernel", kernel)  # noqa: B010
        setattr(layer, "fused_attn", kernel != "explicit")  # noqa: B010


def _pick_attention_kernel(layer: nn.Module, args: tuple, kwargs: dict) -> None:
    if layer.attention_kernel != "auto":
        return
    x = args[0] if args else kwargs["x"]
    device = x.device.type
    low = (torch.bfloat16, torch.float16)
    low_precision = x.dtype in low or (torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) in low)
    setattr(layer, "fused_attn", not (device == "cpu" and low_precision))  # noqa: B010


def _create_backbone(model_name: str, pretrained: bool, **kwargs) -> nn.Module:
    architecture = model_name.split(".", 1)[0]  # "vit_base_patch16_224.augreg_in21k" -> arch
    if ":" not in model_name and not timm.is_model(architecture):
        close = difflib.get_close_matches(model_name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise UserError(f"unknown timm model name '{model_name}'{hint}")
    if pretrained:  # nothing is downloaded: timm reads the weights from a local file
        file = (kwargs.get("pretrained_cfg_overlay") or {}).get("file")
        if file is None or not Path(file).is_file():
            where = f"file {file} does not exist" if file else "no local file was given"
            raise UserError(
                f"pretrained weights for '{model_name}' are read from local disk only and {where}: set "
                "model_kwargs: {pretrained_cfg_overlay: {file: /path/to/weights.safetensors}}"
            )
    return timm.create_model(model_name, pretrained=pretrained, num_classes=0, **kwargs)


class VisionTower(nn.Module):
    """Any timm backbone, a linear projection to ``embed_dim``, L2 normalisation.

    Args:
        model_name: a timm model name, e.g. ``resnet10t`` or ``vit_tiny_patch16_224``.
        embed_dim: size of the joint embedding space (must match the text tower's).
        pretrained: load timm's pretrained weights; they must already be on local disk
            (``model_kwargs={"pretrained_cfg_overlay": {"file": ...}}``), nothing is downloaded.
        model_kwargs: passed to ``timm.create_model``, e.g. ``{"img_size": 64, "patch_size": 8}``.
        channels_last: run convolutions in NHWC layout (faster for a ResNet under bf16 on CPU
            with oneDNN, and the layout tensor cores prefer); numerics are unchanged.
        attention: how a ViT's attention layers compute, see :func:`use_attention_kernel`
            ("auto": explicit matmuls on a CPU under bf16, where they are faster, else fused).
        grad_checkpointing: recompute the backbone's blocks in the backward instead of keeping
            their activations (timm's ``set_grad_checkpointing``; gradients unchanged, one more
            forward of the blocks). A model timm cannot checkpoint is refused by name.
    """

    def __init__(
        self,
        model_name: str = "resnet10t",
        embed_dim: int = 128,
        pretrained: bool = False,
        model_kwargs: dict | None = None,
        channels_last: bool = True,
        attention: AttentionKernel = "auto",
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.model_name, self.embed_dim, self.channels_last = model_name, embed_dim, channels_last
        # Any: forward_features / forward_head / set_grad_checkpointing are timm's API, not nn.Module's.
        self.backbone: Any = _create_backbone(model_name, pretrained, **(model_kwargs or {}))
        use_attention_kernel(self.backbone, attention)
        if grad_checkpointing:
            _checkpoint_backbone(self.backbone, model_name)
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        # Pooled features and tokens both have the backbone's width.
        self.feature_dim = self.token_dim = int(self.backbone.num_features)  # type: ignore[arg-type]  # timm attr
        # The global embedding is the backbone's own pooled output (CLS token or average pool).
        self.proj = nn.Linear(self.token_dim, embed_dim, bias=False)
        nn.init.normal_(self.proj.weight, std=self.token_dim**-0.5)

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to this tower) that must not be weight-decayed."""
        names: set[str] = getattr(self.backbone, "no_weight_decay", lambda: set())()
        return {f"backbone.{n}" for n in names}

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.backbone.forward_features(images)

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] -> the backbone's pooled features [B, feature_dim], unprojected
        (SLIP's self-supervised branch reads the trunk here)."""
        return self.backbone.forward_head(self._features(images), pre_logits=True)

    def forward(self, images: torch.Tensor, return_tokens: bool = False) -> TowerOutput:
        """images [B, 3, H, W] -> (embedding [B, D] normalised, tokens [B, P, C] or None, mask None)."""
        projected, tokens = self.project(images, return_tokens)
        return TowerOutput(F.normalize(projected, dim=-1), tokens)

    def project(self, images: torch.Tensor, return_tokens: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """images [B, 3, H, W] -> (the projection [B, D] before normalisation, tokens or None)."""
        features = self._features(images)
        projected = self.proj(self.backbone.forward_head(features, pre_logits=True))
        if not return_tokens:
            return projected, None
        if features.ndim == 4:  # CNN: [B, C, H, W] -> [B, H*W, C]
            tokens = features.flatten(2).transpose(1, 2)
        else:  # ViT: drop the class/register tokens
            tokens = features[:, getattr(self.backbone, "num_prefix_tokens", 0) :]
        return projected, tokens


class TextTower(nn.Module):
    """CLIP's text transformer (Radford et al. 2021, section 2.4), built from timm blocks.

    Token + learned positional embedding, ``depth`` pre-LayerNorm blocks with a causal mask, a
    final LayerNorm, the features at each row's end-of-text position, a linear projection to
    ``embed_dim``, L2 normalisation. With ``causal=False`` and ``pool="first"`` or ``"mean"`` it
    is a BERT-style bidirectional encoder (ALIGN, Jia et al. 2021): every position attends to
    every real token, padding is masked out of the keys.

    The end-of-text position is the last non-padding token of each row, never
    ``argmax(token_ids)``: OpenAI's trick pools at the wrong place when the end id is not the
    largest id of the vocabulary. Padding may only follow the end token, but the padding id may
    also occur inside a text (CLIP's BPE pads with 0, the id of "!").

    Args:
        vocab_size: number of token ids (linked from the data's tokenizer by the CLI).
        context_length: maximal sequence length (linked from the data's tokenizer).
        width, depth, heads, mlp_ratio: transformer size.
        embed_dim: size of the joint embedding space (must match the vision tower's).
        pad_id: id of the padding token; padding must only follow the end token.
        act_layer: the MLP's activation, a timm name: "gelu", or "quick_gelu" for OpenAI's weights.
        causal: causal self-attention (CLIP) or bidirectional (BERT, ALIGN).
        pool: the global feature: "eot" (end-of-text token, CLIP), "first" (the start token,
            BERT's [CLS]) or "mean" (mean over the real tokens).
        norm_eps: epsilon of the blocks' LayerNorms (timm's 1e-6; OpenAI's weights use 1e-5).
        attention: how the blocks' attention computes, see :func:`use_attention_kernel`.
        dropout: dropout on the attention weights and after each block's attention and MLP
            projections (timm's ``attn_drop`` / ``proj_drop``; CLIP trains without).
        grad_checkpointing: recompute each block in the backward instead of keeping its
            activations (``torch.utils.checkpoint``; gradients unchanged, one more forward).
    """

    def __init__(
        self,
        vocab_size: int,
        context_length: int = 32,
        width: int = 256,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        embed_dim: int = 128,
        pad_id: int = 0,
        act_layer: str = "gelu",
        causal: bool = True,
        pool: Literal["eot", "first", "mean"] = "eot",
        norm_eps: float = 1e-6,
        attention: AttentionKernel = "auto",
        dropout: float = 0.0,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if not 0 <= dropout < 1:
            raise UserError(f"text tower dropout must be in [0, 1), got {dropout}")
        if width % heads:
            raise UserError(f"text tower width {width} is not divisible by heads {heads}")
        if pool not in ("eot", "first", "mean"):
            raise UserError(f"unknown text pooling '{pool}'; use 'eot', 'first' or 'mean'")
        if causal and pool != "eot":
            raise UserError(
                f"pool='{pool}' with a causal text tower sees only the start of the text; "
                "use pool='eot', or causal=false for a bidirectional (BERT-style) tower"
            )
        self.embed_dim, self.token_dim, self.vocab_size = embed_dim, width, vocab_size
        self.context_length, self.pad_id = context_length, pad_id
        self.causal, self.pool, self.grad_checkpointing = causal, pool, grad_checkpointing
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.blocks = nn.ModuleList(
            Block(
                width,
                heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=True,
                proj_drop=dropout,
                attn_drop=dropout,
                act_layer=_activation(act_layer),
                norm_layer=partial(nn.LayerNorm, eps=norm_eps),  # type: ignore[arg-type]  # timm calls it like a class
            )
            for _ in range(depth)
        )
        self.ln_final = nn.LayerNorm(width)
        self.proj = nn.Linear(width, embed_dim, bias=False)
        self._init_weights(depth)
        use_attention_kernel(self.blocks, attention)

    def _init_weights(self, depth: int) -> None:
        # CLIP's initialisation (open_clip TextTransformer.init_parameters).
        width = self.token_dim
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        attn_std, proj_std, fc_std = width**-0.5, width**-0.5 * (2 * depth) ** -0.5, (2 * width) ** -0.5
        for block in self.blocks:
            attn, mlp = cast(Attention, block.attn), cast(Mlp, block.mlp)  # timm's Block: its layers' types
            stds = {attn.qkv: attn_std, attn.proj: proj_std, mlp.fc1: fc_std, mlp.fc2: proj_std}
            for linear, std in stds.items():
                nn.init.normal_(cast(nn.Linear, linear).weight, std=std)
        nn.init.normal_(self.proj.weight, std=width**-0.5)

    def forward(self, token_ids: torch.Tensor, return_tokens: bool = False) -> TowerOutput:
        """token_ids [B, L] -> (embedding [B, D] normalised, tokens [B, L, W] or None, mask [B, L])."""
        length = check_context(token_ids, self.context_length)
        positions = torch.arange(length, device=token_ids.device)
        last = torch.where(token_ids != self.pad_id, positions, 0).amax(dim=1)  # the end token
        mask = positions <= last[:, None]
        x = self.token_embedding(token_ids) + self.positional_embedding[:length]
        # Causal: padding follows the end token, so no position up to it can see padding and no
        # key mask is needed. Bidirectional: padding is masked out of every row's keys.
        attn_mask = None if self.causal else mask[:, None, None, :]
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, attn_mask=attn_mask, is_causal=self.causal, use_reentrant=False)
            else:
                x = block(x, attn_mask=attn_mask, is_causal=self.causal)
        x = self.ln_final(x)
        if self.pool == "eot":
            pooled = x[torch.arange(x.shape[0], device=x.device), last]
        elif self.pool == "first":
            pooled = x[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(x.dtype)
            pooled = (x * weights).sum(dim=1) / weights.sum(dim=1)
        embedding = F.normalize(self.proj(pooled), dim=-1)
        return TowerOutput(embedding, x if return_tokens else None, mask)


def check_context(token_ids: torch.Tensor, context_length: int) -> int:
    """The texts' length, or a UserError when it exceeds what a text tower's positions cover."""
    length = token_ids.shape[1]
    if length > context_length:
        raise UserError(
            f"text of {length} tokens exceeds the text tower's context_length {context_length}; "
            "tokenize with the same context length"
        )
    return length


def _checkpoint_backbone(backbone: Any, model_name: str) -> None:  # a timm model
    try:
        backbone.set_grad_checkpointing(True)
    except (AssertionError, NotImplementedError, AttributeError) as error:
        raise UserError(
            f"timm cannot checkpoint '{model_name}' ({one_line(error) or type(error).__name__}): set "
            "grad_checkpointing: false for this vision tower, or use a model timm can checkpoint (ResNets, ViTs)"
        ) from None


def _activation(name: str) -> type[nn.Module]:
    try:
        return get_act_layer(name)
    except (KeyError, ValueError) as error:
        raise UserError(f"unknown activation '{name}' for the text tower; use e.g. 'gelu' or 'quick_gelu'") from error
