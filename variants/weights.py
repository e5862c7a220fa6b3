"""Weight files into the suite's towers.

Reading a local checkpoint as a flat state dict (suite ``.ckpt``, OpenAI's TorchScript archives,
open_clip state dicts and training checkpoints, safetensors), the OpenAI CLIP layout (its shapes,
read from the weights as OpenAI's ``build_model`` does, and its key names mapped to the suite's),
Chinese-CLIP's layout (the same ViT, a BERT text tower for :class:`~variants.hf_text.HFTextTower`),
and loading weights into a module's towers with every mismatching key listed. Used by
``ContrastiveModule(init_from=...)``, by the import commands (``variants.pretrained``,
``variants.cn_clip``) and by the
analysis' checkpoint loader (``fit_problems``).

Files are read with ``torch.load(weights_only=True)``, safetensors, or ``torch.jit.load`` for
OpenAI's TorchScript archives, whose code is TorchScript, not pickled Python. Nothing is downloaded.
"""

from __future__ import annotations

import math
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from common.errors import UserError
from common.files import holds_objects
from common.runs import resolve_checkpoint
from variants.hf_text import not_tensors
from variants.objectives import InfoNCE
from variants.objectives.base import LearnedScale

# Entries of OpenAI's archives that are not weights (OpenAI's build_model drops them too).
NOT_WEIGHTS = ("input_resolution", "context_length", "vocab_size", "attn_mask")
_VIT_SIZES = {384: "small", 512: "medium", 768: "base", 1024: "large", 1280: "huge"}


@dataclass(frozen=True)
class CLIPArchitecture:
    """The shapes of an OpenAI-layout CLIP ViT, read from its weights."""

    image_size: int
    patch_size: int
    vision_width: int
    vision_depth: int
    embed_dim: int
    vocab_size: int
    context_length: int
    text_width: int
    text_depth: int
    vision_heads: int
    text_heads: int
    vision_mlp_ratio: float = 4.0
    text_mlp_ratio: float = 4.0
    quick_gelu: bool = False

    def vision_config(self) -> dict:
        """The vision tower as a ``class_path`` config (what a checkpoint records)."""
        return vit_tower_config(
            self.image_size, self.patch_size, self.vision_width, self.vision_depth, self.vision_heads,
            self.vision_mlp_ratio, self.quick_gelu, self.embed_dim,
        )  # fmt: skip

    def text_config(self) -> dict:
        """The text tower as a ``class_path`` config: OpenAI's layout (causal, end-of-text pooling)."""
        init_args = {
            "vocab_size": self.vocab_size,
            "context_length": self.context_length,
            "width": self.text_width,
            "depth": self.text_depth,
            "heads": self.text_heads,
            "mlp_ratio": self.text_mlp_ratio,
            "embed_dim": self.embed_dim,
            "pad_id": 0,
            "act_layer": "quick_gelu" if self.quick_gelu else "gelu",
            "norm_eps": 1e-5,
        }
        return {"class_path": "variants.towers.TextTower", "init_args": init_args}


def vit_tower_config(
    image_size: int, patch_size: int, width: int, depth: int, heads: int, mlp_ratio: float, quick_gelu: bool,
    embed_dim: int,
) -> dict:  # fmt: skip
    """An OpenAI-layout CLIP ViT (pre-LayerNorm, class token, ``ln_post`` on it, ``x @ proj``) as a
    :class:`~variants.towers.VisionTower` ``class_path`` config: a timm CLIP ViT with every shape given."""
    size = _VIT_SIZES.get(width, "base")
    quick = "quickgelu_" if quick_gelu else ""
    # The name only labels the recorded config: every shape is passed explicitly.
    name = f"vit_{size}_patch{patch_size}_clip_{quick}{image_size}"
    init_args = {
        "model_name": name if _is_timm_model(name) else "vit_base_patch16_clip_224",
        "embed_dim": embed_dim,
        "model_kwargs": {
            "img_size": image_size,
            "patch_size": patch_size,
            "embed_dim": width,
            "depth": depth,
            "num_heads": heads,
            "mlp_ratio": mlp_ratio,
            "act_layer": "quick_gelu" if quick_gelu else "gelu",
        },
    }
    return {"class_path": "variants.towers.VisionTower", "init_args": init_args}


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], bool]:
    """A checkpoint file -> (flat state dict, whether it was a TorchScript archive)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path)), False
        if _is_torchscript(path):
            with warnings.catch_warnings():  # torch.jit's deprecation notice; OpenAI's files are TorchScript
                warnings.simplefilter("ignore", FutureWarning)
                return torch.jit.load(str(path), map_location="cpu").state_dict(), True
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - whatever torch cannot read is refused in one line
        if holds_objects(error):  # torch's advice (weights_only=False) would run the file's code
            raise UserError(not_tensors(path)) from None
        raise UserError(f"cannot read checkpoint {path}: {type(error).__name__}: {error}".splitlines()[0]) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # open_clip's training checkpoints
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    if all(key.startswith("module.") for key in state):  # saved from DistributedDataParallel
        state = {key[len("module.") :]: value for key, value in state.items()}
    return state, False


def infer_architecture(
    state: dict[str, torch.Tensor], quick_gelu: bool = False, config: dict | None = None
) -> CLIPArchitecture:
    """Shapes of an OpenAI-layout CLIP ViT from its state dict; a clear error for other layouts.

    The weights fix every shape but the attention heads: ``config`` (open_clip's model config,
    see :func:`open_clip_config`) gives them; without one, heads of width 64 as in OpenAI's models.
    """
    if "visual.conv1.weight" not in state or "token_embedding.weight" not in state:
        if any(key.startswith("visual.layer1.") for key in state):
            kind = "a ModifiedResNet vision tower (RN50, RN101, ...)"
        elif any(key.startswith(("visual.trunk.", "text.")) for key in state):
            kind = "a timm or Hugging Face tower (open_clip's custom models)"
        else:
            kind = "no CLIP layout found"
        raise UserError(
            f"only OpenAI-layout CLIP ViTs can be imported (visual.conv1, transformer.resblocks, ...); this "
            f"checkpoint has {kind}. For a timm vision backbone alone use VisionTower(pretrained=True, "
            "model_kwargs={'pretrained_cfg_overlay': {'file': PATH}})"
        )
    needed = ("visual.positional_embedding", "text_projection", "positional_embedding", "ln_final.weight",
              "visual.transformer.resblocks.0.mlp.c_fc.weight", "transformer.resblocks.0.mlp.c_fc.weight")  # fmt: skip
    missing = [key for key in needed if key not in state]
    if missing:
        raise UserError(f"the checkpoint is not a whole CLIP model: it has no {', '.join(missing)}")
    vision_cfg, text_cfg = (config or {}).get("vision_cfg", {}), (config or {}).get("text_cfg", {})
    patch = state["visual.conv1.weight"]
    vision_width, text_width = patch.shape[0], state["ln_final.weight"].shape[0]
    grid = math.isqrt(state["visual.positional_embedding"].shape[0] - 1)
    return CLIPArchitecture(
        image_size=grid * patch.shape[-1],
        patch_size=patch.shape[-1],
        vision_width=vision_width,
        vision_depth=_count_blocks(state, "visual.transformer.resblocks."),
        embed_dim=state["text_projection"].shape[1],
        vocab_size=state["token_embedding.weight"].shape[0],
        context_length=state["positional_embedding"].shape[0],
        text_width=text_width,
        text_depth=_count_blocks(state, "transformer.resblocks."),
        vision_heads=vision_width // vision_cfg.get("head_width", 64),
        text_heads=text_cfg.get("heads", text_width // 64),
        vision_mlp_ratio=_mlp_ratio(state["visual.transformer.resblocks.0.mlp.c_fc.weight"]),
        text_mlp_ratio=_mlp_ratio(state["transformer.resblocks.0.mlp.c_fc.weight"]),
        quick_gelu=quick_gelu,
    )


_BLOCK = [("ln_1", "norm1"), ("ln_2", "norm2"), ("attn.in_proj_", "attn.qkv."), ("attn.out_proj", "attn.proj"),
          ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")]  # fmt: skip


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI/open_clip keys -> this suite's (``vision_tower.*``, ``text_tower.*``, the logit scale).

    The attention's packed ``in_proj`` is timm's ``qkv`` (same [3 * width, width] order), OpenAI's
    ``x @ proj`` matrices become ``nn.Linear`` weights (transposed).
    """
    out = {}
    for key, value in state.items():
        if key in NOT_WEIGHTS or key.endswith(".attn_mask"):
            continue
        if key.startswith("visual."):
            out.update(_convert_visual(key, value))
        elif key == "text_projection":
            out["text_tower.proj.weight"] = value.t()
        elif key == "logit_scale":
            out["logit_scale"] = value
        else:
            name = key.replace("transformer.resblocks.", "blocks.")
            for old, new in _BLOCK:
                name = name.replace(old, new)
            out[f"text_tower.{name}"] = value
    return out


def _convert_visual(key: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    """One ``visual.*`` entry of an OpenAI-layout ViT -> the VisionTower's (timm CLIP ViT) key."""
    name = key[len("visual.") :]
    if name == "proj":
        return {"vision_tower.proj.weight": value.t()}
    if name == "class_embedding":
        name, value = "cls_token", value.reshape(1, 1, -1)
    elif name == "positional_embedding":
        name, value = "pos_embed", value.unsqueeze(0)
    name = name.replace("conv1", "patch_embed.proj").replace("ln_pre", "norm_pre").replace("ln_post", "norm")
    name = name.replace("transformer.resblocks.", "blocks.")
    for old, new in _BLOCK:
        name = name.replace(old, new)
    return {f"vision_tower.backbone.{name}": value}


def is_cn_clip(state: dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` is a Chinese-CLIP (``cn_clip``) model: its text tower is a BERT under ``bert.``."""
    return any(key.startswith("bert.") for key in state)


def convert_cn_clip_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Chinese-CLIP keys -> this suite's: the OpenAI-layout ViT (``visual.*``) as in
    :func:`convert_state_dict`, the BERT (``bert.*``) under the HFTextTower's ``text_tower.model.*``
    (transformers' BertModel has cn_clip's key names), ``text_projection`` ([width, embed_dim],
    applied as ``x[:, 0] @ text_projection``) as ``text_tower.proj.weight`` (transposed), the logit
    scale. The pooler (unused by cn_clip) is dropped; a checkpoint trained with cn_clip's
    FlashAttention (packed ``Wqkv`` keys) is unpacked to the standard layout first."""
    if "visual.conv1.weight" not in state:
        kind = "a ModifiedResNet (RN50)" if any(k.startswith("visual.layer1.") for k in state) else "no"
        raise UserError(
            f"this Chinese-CLIP checkpoint has {kind} vision transformer; only its ViT vision towers "
            "(ViT-B-16, ViT-B-32, ViT-L-14, ViT-L-14-336, ViT-H-14) can be imported"
        )
    state = _unpack_flash_attention(state)
    missing = [
        k for k in ("text_projection", "visual.proj", "bert.embeddings.word_embeddings.weight") if k not in state
    ]
    if missing:
        raise UserError(f"the Chinese-CLIP checkpoint is not a whole model: it has no {', '.join(missing)}")
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        if key.startswith("visual."):
            out.update(_convert_visual(key, value))
        elif key.startswith("bert."):
            if not key.startswith("bert.pooler.") and key != "bert.embeddings.position_ids":
                out[f"text_tower.model.{key[len('bert.') :]}"] = value
        elif key == "text_projection":
            out["text_tower.proj.weight"] = value.t()
        elif key == "logit_scale":
            out["logit_scale"] = value
        else:
            unknown.append(key)
    if unknown:
        raise UserError(f"the Chinese-CLIP checkpoint has entries this import does not know: {', '.join(unknown[:8])}")
    return out


def _unpack_flash_attention(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """cn_clip's FlashAttention layout (``--use-flash-attention``) -> its standard one, as
    ``cn_clip.clip.convert_state_dict`` does: the ViT's ``attn.Wqkv`` is ``attn.in_proj_*``, the
    BERT's packed ``attention.self.Wqkv`` splits into query/key/value and ``attention.self.out_proj``
    is ``attention.output.dense``."""
    out = {}
    for key, value in state.items():
        if key.startswith("visual.") and ".attn.Wqkv." in key:
            out[key.replace(".attn.Wqkv.", ".attn.in_proj_")] = value
        elif key.startswith("bert.") and ".attention.self.Wqkv." in key:
            kind = key.rpartition(".")[2]  # weight or bias
            for part, chunk in zip(("query", "key", "value"), value.chunk(3), strict=True):
                out[key.replace(f"self.Wqkv.{kind}", f"self.{part}.{kind}")] = chunk
        elif key.startswith("bert.") and ".attention.self.out_proj." in key:
            out[key.replace(".attention.self.out_proj.", ".attention.output.dense.")] = value
        else:
            out[key] = value
    return out


#: The towers a checkpoint can initialise (``ContrastiveModule(init_parts=...)`` picks among them).
TOWERS = ("vision_tower", "text_tower")


def init_towers(model: torch.nn.Module, path: str | Path, parts: tuple[str, ...] = TOWERS) -> None:
    """Initialise ``model``'s towers from a local checkpoint, an OpenAI/open_clip file, a Chinese-CLIP
    (``cn_clip``) checkpoint (recognised by its ``bert.*`` keys; the text tower must be an
    :class:`~variants.hf_text.HFTextTower`) or a suite ``.ckpt``; mismatching towers end with the keys listed. Learned temperatures start from the
    checkpoint's: a suite term's from the term of the same name, CLIP's logit scale for InfoNCE
    terms (clamped to each term's cap). Other term state (heads, discriminators) starts fresh.

    ``parts`` limits it to some towers: the others, and the temperatures (which belong to the joint
    space of both towers), keep their initialisation, and the checkpoint's other towers may have any
    shape (an English run's image tower under a Chinese BERT text tower).

    ``path`` may be a run directory: its newest ``checkpoints/last.ckpt`` (as the analysis' --ckpt)."""
    path = resolve_checkpoint(path, "model.init_from")
    load_weights(model, read_state_dict(path)[0], str(path), parts)


def fit_problems(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], prefix: str = "") -> list[str]:
    """What keeps ``given`` from loading strictly into a module whose state dict is ``expected``:
    one entry per kind (missing keys, unexpected keys, shape mismatch), naming up to 8 keys each."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = sorted(k for k in set(given) & set(expected) if given[k].shape != expected[k].shape)
    return [
        f"{prefix}{label} {', '.join(keys[:8])}{f' and {len(keys) - 8} more' if len(keys) > 8 else ''}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch:", wrong))
        if keys
    ]


def load_weights(
    model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, parts: tuple[str, ...] = TOWERS
) -> None:
    """:func:`init_towers` for a state dict already read (suite, OpenAI/open_clip or Chinese-CLIP layout)."""
    if not any(key.startswith(("vision_tower.", "text_tower.")) for key in state):  # not a suite checkpoint
        if is_cn_clip(state):
            state = convert_cn_clip_state_dict(state)
        else:
            infer_architecture(state)  # a clear error for layouts that cannot be imported
            state = convert_state_dict(state)
    problems = []  # ``parts``: towers among TOWERS (ContrastiveModule checks model.init_parts)
    for prefix in parts:
        tower = getattr(model, prefix)
        part = {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}
        problems += fit_problems(tower.state_dict(), part, f"{prefix} ")
        if not problems:
            tower.load_state_dict(part, strict=True)
    if problems:
        raise UserError(
            f"{source} does not fit the model's towers (build them with its shapes): " + "; ".join(problems)
        )
    for name, term in getattr(model, "terms", {}).items() if set(parts) == set(TOWERS) else ():
        scale = getattr(term, "logit_scale", None)
        if not isinstance(scale, LearnedScale) or not scale.log_scale.requires_grad:
            continue  # no temperature, or a fixed one: the user's value stands
        # A suite checkpoint's term of the same name, else CLIP's softmax scale for softmax InfoNCE
        # terms only (a sigmoid or token-wise term's scale means something else).
        value = state.get(f"terms.{name}.logit_scale.log_scale")
        if value is None and isinstance(term, InfoNCE):
            value = state.get("logit_scale")
        if value is not None:
            with torch.no_grad():
                scale.log_scale.copy_(value)
            scale.clamp_()


def infonce_config(scale: float) -> dict:
    """An :class:`~variants.objectives.InfoNCE` term at an imported model's logit ``scale``, as a
    ``class_path`` config. CLIP caps the scale at 100; an imported model may sit at the cap
    (OpenAI's: exactly 100) or, fine-tuned elsewhere, above it: the cap is raised to the scale."""
    init_args = {"init_temperature": 1.0 / scale, "max_logit_scale": max(100.0, scale)}
    return {"class_path": "variants.objectives.InfoNCE", "init_args": init_args}


def _mlp_ratio(fc1: torch.Tensor) -> float:
    """The ratio whose ``int(width * ratio)`` (timm's hidden size) is exactly fc1's output size."""
    hidden, width = fc1.shape
    ratio = hidden / width
    return ratio if int(width * ratio) == hidden else (hidden + 0.5) / width


def _count_blocks(state: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for key in state if (m := pattern.match(key))})


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def _is_timm_model(name: str) -> bool:
    import timm

    return timm.is_model(name)
