"""A suite checkpoint as an open_clip model: a model config and a state dict that
``open_clip.create_model_and_transforms`` loads, with the tokenizer open_clip will use.

    OUT/open_clip_config.json         {"model_cfg", "preprocess_cfg"}: ``create_model_and_transforms("local-dir:OUT")``
    OUT/<name>.json                   the model config alone: ``open_clip.add_model_config(OUT)``, then
                                      ``create_model_and_transforms(name, pretrained="OUT/open_clip_model.safetensors")``
    OUT/open_clip_model.safetensors   the weights (``visual.trunk.*`` timm backbone, ``visual.head.proj``,
                                      the text transformer, ``logit_scale`` and, for a sigmoid term, ``logit_bias``)
    OUT/tokenizer.json, tokenizer_config.json   a tokenizer open_clip has no name for (word-level,
                                      BERT WordPiece, a trained BPE), as a Hugging Face fast tokenizer
                                      that ``open_clip.get_tokenizer`` loads through ``hf_tokenizer_name``
    OUT/USAGE.md                      the lines above for this model

The vision tower is a timm model by name (``vision_cfg.timm_model_name``, ``timm_pool: ""`` keeps
the model's own pooling, ``timm_proj: linear``), so it takes no ``model_kwargs``; the text tower is
open_clip's ``TextTransformer`` (pre-LayerNorm blocks, causal mask, the end token's features, a
bias-free projection), pooling with ``argmax`` for CLIP's BPE (its end id is the largest) and
``eos`` at the tokenizer's end id otherwise. What open_clip's CLIP cannot express is refused with the
reason: a scoring term (FILIP's token-wise similarity), a Hugging Face text tower, a bidirectional
or first/mean-pooled text tower (open_clip masks no padding there), timm ``model_kwargs``.

One difference stays: open_clip applies one LayerNorm epsilon to every text LayerNorm; the suite's
blocks use ``norm_eps`` (1e-6 by default) and its final LayerNorm 1e-5. The export uses the blocks'
and the test measures what the final one's costs (docs/guide.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from timm.layers import Attention, Mlp
from torch import nn

from analysis.checkpoint import LoadedCheckpoint
from common.errors import UserError
from common.files import write_atomic, write_json, write_text
from datamodules.tokenizer.base import HFTokenizer
from datamodules.tokenizer.clip import CLIPTokenizer
from variants.module import ContrastiveModule
from variants.objectives.base import LearnedScale
from variants.towers import TextTower, VisionTower

WEIGHTS = "open_clip_model.safetensors"
_BLOCK = [("norm1", "ln_1"), ("norm2", "ln_2"), ("attn.qkv.weight", "attn.in_proj_weight"),
          ("attn.qkv.bias", "attn.in_proj_bias"), ("attn.proj", "attn.out_proj"), ("mlp.fc1", "mlp.c_fc"),
          ("mlp.fc2", "mlp.c_proj")]  # fmt: skip


def refusal(loaded: LoadedCheckpoint) -> str | None:
    """Why open_clip's CLIP cannot hold this checkpoint, or None."""
    model = loaded.model
    if model.scorer is not None:
        name = type(model.scorer).__name__
        return f"its scoring term {name} ranks pairs by token-wise similarity, which open_clip's CLIP (global embeddings only) cannot compute"
    text, vision = model.text_tower, model.vision_tower
    if type(text) is not TextTower:  # a subclass may compute differently: only the class itself maps
        return f"its text tower is {type(text).__name__}, not the suite's TextTower; open_clip's text towers (its hf ones add their own pooler and projection) would embed differently"
    if not text.causal or text.pool != "eot":
        return "its text tower is bidirectional or pools the first/mean token; open_clip's TextTransformer masks no padding there"
    if not isinstance(vision, VisionTower):
        return f"its vision tower is {type(vision).__name__}, not a timm VisionTower"
    kwargs = _model_kwargs(loaded)
    if kwargs:
        return (
            f"its timm vision model is built with model_kwargs {kwargs}, and open_clip builds a timm tower by name "
            "only (vision_cfg.timm_model_name); export it with --format onnx instead"
        )
    shape = _block_shape(text)
    act = shape.act if shape is not None else "GELU"
    if act not in ("GELU", "QuickGELU"):
        return f"its text tower's activation is {act}; open_clip's text transformer has GELU or QuickGELU"
    return None


def _model_kwargs(loaded: LoadedCheckpoint) -> dict:
    """The timm ``model_kwargs`` the vision tower was built with: from the recorded config, or, for a
    module built in Python, the parameters that differ from timm's default build of the name."""
    tower = loaded.model.hparams.get("vision_tower")
    if isinstance(tower, dict):
        return dict((tower.get("init_args") or {}).get("model_kwargs") or {})
    import timm

    vision = loaded.model.vision_tower
    default = timm.create_model(vision.model_name, pretrained=False, num_classes=0)
    ours = {k: tuple(v.shape) for k, v in vision.backbone.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in default.state_dict().items()}
    differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    return {"differs from the default build at": differ[:3]} if differ else {}


def model_config(loaded: LoadedCheckpoint, image_size: int, tokenizer_dir: Path | None) -> dict:
    """open_clip's model config for the checkpoint's towers."""
    model = loaded.model
    vision, text = model.vision_tower, _text_tower(model)
    block = _block_shape(text)
    quick = block is not None and block.act == "QuickGELU"
    tokenizer = loaded.tokenizer
    text_cfg: dict = {
        "context_length": text.context_length,
        "vocab_size": text.vocab_size,
        "width": text.token_dim,
        "heads": block.heads if block is not None else 1,
        "layers": len(text.blocks),
        "mlp_ratio": block.hidden / text.token_dim if block is not None else 4.0,
        "pad_id": text.pad_id,
        "norm_kwargs": {"eps": block.eps if block is not None else text.ln_final.eps},
    }
    if isinstance(tokenizer, CLIPTokenizer):
        text_cfg["pool_type"] = "argmax"  # CLIP's end id is the largest of its vocabulary
    else:
        text_cfg |= {"pool_type": "eos", "eos_id": _end_id(tokenizer)}
        if tokenizer_dir is not None:
            text_cfg["hf_tokenizer_name"] = str(tokenizer_dir.resolve())
    config = {
        "embed_dim": vision.embed_dim,
        "quick_gelu": quick,
        "vision_cfg": {
            "timm_model_name": vision.model_name,
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "timm_proj_bias": False,
            "image_size": image_size,
        },
        "text_cfg": text_cfg,
    }
    bias = _logit_bias(model)
    if bias is not None:
        config["init_logit_bias"] = float(bias)
    return config


def _end_id(tokenizer: Callable[[list[str]], torch.Tensor]) -> int:
    ids = tokenizer(["a"]).tolist()[0]
    pad = getattr(tokenizer, "pad_id", 0)
    return int([i for i in ids if i != pad][-1])


def _text_tower(model: ContrastiveModule) -> TextTower:
    text = model.text_tower
    assert isinstance(text, TextTower), "export_open_clip refuses any other text tower first (refusal)"
    return text


class _BlockShape(NamedTuple):
    act: str  # the MLP's activation class
    heads: int
    hidden: int  # the MLP's hidden width
    eps: float  # the LayerNorms' epsilon


def _block_shape(text: TextTower) -> _BlockShape | None:
    """What open_clip's config says of the text blocks, read from the first (TextTower builds timm
    Blocks of an Mlp, an Attention and LayerNorms); None for a tower without blocks."""
    if not len(text.blocks):
        return None
    block = text.blocks[0]
    mlp, attn, norm = block.mlp, block.attn, block.norm1
    if not (
        isinstance(mlp, Mlp)
        and isinstance(mlp.fc1, nn.Linear)
        and isinstance(attn, Attention)
        and isinstance(norm, nn.LayerNorm)
    ):
        raise UserError(
            f"--format open_clip: the text tower's blocks are not timm Blocks of Mlp, Attention and LayerNorm "
            f"({type(mlp).__name__}, {type(attn).__name__}, {type(norm).__name__})"
        )
    return _BlockShape(type(mlp.act).__name__, attn.num_heads, mlp.fc1.out_features, norm.eps)


def _scale_term(model: ContrastiveModule) -> nn.Module | None:
    """The first term with a learned logit scale (InfoNCE, Sigmoid): open_clip's logit_scale."""
    for term in model.terms.values():
        if isinstance(getattr(term, "logit_scale", None), LearnedScale):
            return term
    return None


def _logit_bias(model: ContrastiveModule) -> torch.Tensor | None:
    term = _scale_term(model)
    bias = getattr(term, "logit_bias", None) if term is not None else None
    return bias.detach() if isinstance(bias, torch.Tensor) else None


def state_dict(loaded: LoadedCheckpoint) -> dict[str, torch.Tensor]:
    """The suite's weights under open_clip's names (the inverse of ``variants.weights.convert_state_dict``
    for the text tower; the timm backbone keeps its own names under ``visual.trunk``)."""
    model = loaded.model
    out = {f"visual.trunk.{k}": v for k, v in model.vision_tower.backbone.state_dict().items()}
    out["visual.head.proj.weight"] = model.vision_tower.proj.weight
    text = _text_tower(model)
    for key, value in text.state_dict().items():
        if key == "proj.weight":
            out["text_projection"] = value.t()
            continue
        name = key.replace("blocks.", "transformer.resblocks.", 1) if key.startswith("blocks.") else key
        for ours, theirs in _BLOCK:
            name = name.replace(ours, theirs)
        out[name] = value
    scale = getattr(_scale_term(model), "logit_scale", None)
    out["logit_scale"] = scale.log_scale.detach() if isinstance(scale, LearnedScale) else torch.tensor(0.0)
    bias = _logit_bias(model)
    if bias is not None:
        out["logit_bias"] = bias.reshape(1)
    return {k: v.detach().float().contiguous().clone() for k, v in out.items()}


def export_open_clip(loaded: LoadedCheckpoint, out: Path, name: str) -> dict:
    """Write the open_clip model of ``loaded`` under ``out``; returns what was written."""
    why = refusal(loaded)
    if why is not None:
        raise UserError(f"--format open_clip: {loaded.name} cannot become an open_clip model: {why}")
    from safetensors.torch import save

    image_size = int(getattr(loaded.image_transform, "image_size", 224))
    tokenizer = loaded.tokenizer
    hf = tokenizer if isinstance(tokenizer, HFTokenizer) else None  # written beside the model
    if hf is None and not isinstance(tokenizer, CLIPTokenizer):
        raise UserError(f"--format open_clip: the tokenizer {type(tokenizer).__name__} cannot be written for open_clip")
    tokenizer_dir = out if hf is not None else None
    config = model_config(loaded, image_size, tokenizer_dir)
    transform = loaded.image_transform
    preprocess = {"size": image_size, "mean": list(getattr(transform, "mean", (0.48145466, 0.4578275, 0.40821073))),
                  "std": list(getattr(transform, "std", (0.26862954, 0.26130258, 0.27577711))),
                  "interpolation": "bicubic", "resize_mode": "shortest"}  # fmt: skip
    weights = state_dict(loaded)
    out.mkdir(parents=True, exist_ok=True)
    if hf is not None:
        write_hf_tokenizer(hf, out)
    write_json(out / "open_clip_config.json", {"model_cfg": config, "preprocess_cfg": preprocess})
    write_json(out / f"{name}.json", config)
    write_atomic(out / WEIGHTS, lambda f: f.write(save(weights)))
    write_text(out / "USAGE.md", usage(name, out, tokenizer_dir is not None))
    return {"format": "open_clip", "model": name, "dir": str(out), "weights": str(out / WEIGHTS),
            "tokenizer": "hf (tokenizer.json)" if tokenizer_dir else "open_clip's CLIP BPE",
            "image_size": image_size, "preprocess_cfg": preprocess}  # fmt: skip


def write_hf_tokenizer(tokenizer: HFTokenizer, out: Path) -> None:
    """The suite's HF ``tokenizers`` tokenizer as a folder ``transformers.AutoTokenizer`` loads (a
    fast tokenizer; open_clip's HFTokenizer pads to the context length with its pad token and
    truncates keeping the start and end tokens, as the suite does)."""
    inner = tokenizer.tokenizer
    pad = inner.id_to_token(tokenizer.pad_id)
    write_atomic(out / "tokenizer.json", lambda f: f.write(inner.to_str().encode("utf-8")))
    write_json(
        out / "tokenizer_config.json",
        {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": pad, "model_max_length": tokenizer.context_length,
         "padding_side": "right", "truncation_side": "right", "clean_up_tokenization_spaces": False},
    )  # fmt: skip


def usage(name: str, out: Path, hf_tokenizer: bool) -> str:
    folder = out.resolve()
    lines = [
        f"# {name}: a clip-variants checkpoint as an open_clip model",
        "",
        "```python",
        "import open_clip",
        f'model, _, preprocess = open_clip.create_model_and_transforms("local-dir:{folder}")',
        f'tokenizer = open_clip.get_tokenizer("local-dir:{folder}")',
        "# or by name:",
        f'open_clip.add_model_config("{folder}")',
        f'model, _, preprocess = open_clip.create_model_and_transforms("{name}", pretrained="{folder / WEIGHTS}")',
        f'tokenizer = open_clip.get_tokenizer("{name}")',
        "```",
        "",
        "CLIP_benchmark: `clip_benchmark eval --model_type open_clip --model local-dir:"
        f"{folder} --pretrained none --dataset wds/NAME --dataset_root DIR --no_amp` on a dataset folder "
        "from `python -m analysis export --format clip_benchmark`, which prints the full command "
        "(under NumPy 2: `python -m analysis.export.clip_benchmark_cli eval ...`, CLIP_benchmark issue 147).",
    ]
    if hf_tokenizer:
        lines += [
            "",
            "The tokenizer is not open_clip's CLIP BPE: it is tokenizer.json here, a Hugging Face fast tokenizer "
            f"that get_tokenizer loads (transformers needed) through text_cfg.hf_tokenizer_name = {folder}; "
            "if you move this folder, use the local-dir: form (it reads the tokenizer from the folder itself).",
        ]
    return "\n".join(lines) + "\n"


def load_config(out: Path) -> dict:
    return json.loads((out / "open_clip_config.json").read_text())
