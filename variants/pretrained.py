"""Import OpenAI CLIP and open_clip checkpoints (local files) into the suite's towers.

The vision transformer becomes a timm CLIP-layout ViT (``vit_*_clip_*``) inside a
:class:`~variants.towers.VisionTower`, the text transformer a :class:`~variants.towers.TextTower`
(causal, end-of-text pooling, the same layout as OpenAI's), and the learned logit scale the
temperature of an :class:`~variants.objectives.InfoNCE` term, so that

    model = load_open_clip("ViT-B-32", "/models/ViT-B-32.pt")
    model.encode_image(images), model.encode_text(CLIPTokenizer()(texts))

give the embeddings open_clip gives (tested to 1e-5 on ViT-B-32). The shapes are read from the
weights, as OpenAI's ``build_model`` does. What the weights do not tell comes from the name:
the activation (OpenAI's models use QuickGELU, selected by TorchScript archives and open_clip's
``-quickgelu`` names; open_clip's own configs GELU) and the attention heads (64 wide, except in
ViT-H/g/bigG, whose open_clip configs are read when open_clip is installed). A text holding a
literal "<end_of_text>" is pooled at its last end token here, at its first in open_clip (argmax):
the only input on which the embeddings differ.

Files are read with ``torch.load(weights_only=True)`` (state dicts, open_clip's
``{"state_dict": ...}`` training checkpoints), safetensors, or ``torch.jit.load`` for OpenAI's
TorchScript archives, whose code is TorchScript, not pickled Python. Nothing is downloaded.

    python -m variants.pretrained --model ViT-B-32 --checkpoint /models/ViT-B-32.pt --out runs/imported/vit-b-32.ckpt

writes a suite checkpoint that every ``python -m analysis`` command reads, and that
``ContrastiveModule(init_from=...)`` fine-tunes with any objective.

Chinese-CLIP (``cn_clip``) checkpoints go through the same command with a ``cn_clip:`` name,
``cn_clip:VISION@TEXT`` with cn_clip's architecture names (``variants.cn_clip`` has the details):

    python -m variants.pretrained --model cn_clip:ViT-B-16@RoBERTa-wwm-ext-base-chinese --checkpoint /models/clip_cn_vit-b-16.pt --out runs/imported/cn-clip-vit-b-16.ckpt
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from common.errors import UserError, exit_on_user_error
from common.files import save_torch
from variants import cn_clip
from variants.module import ContrastiveModule
from variants.objectives import InfoNCE
from variants.towers import TextTower, VisionTower
from variants.weights import infer_architecture, infonce_config, is_cn_clip, load_weights, read_state_dict

# open_clip config entries the import reproduces; any other (layer scale, attentional pooling,
# other pooling, HF or timm towers, ...) changes the model in ways a state dict may not show.
_SUPPORTED = {
    "": {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"},
    "vision_cfg": {"image_size", "layers", "width", "head_width", "patch_size", "mlp_ratio"},
    "text_cfg": {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"},
}


def open_clip_config(model_name: str) -> dict | None:
    """open_clip's architecture config for ``model_name`` (its ``model_configs/<name>.json``, read
    without importing open_clip), or None when open_clip is not installed or has no such name."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model_configs" / f"{model_name}.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    unsupported = sorted(
        f"{part + '.' if part else ''}{key}"
        for part, allowed in _SUPPORTED.items()
        for key in (config.get(part, {}) if part else config)
        if key not in allowed
    )
    if unsupported:
        raise UserError(f"open_clip's {model_name} uses {', '.join(unsupported)}, which this import does not reproduce")
    return config


def load_open_clip(model_name: str, checkpoint_path: str | Path, quick_gelu: bool | None = None) -> ContrastiveModule:
    """An OpenAI CLIP or open_clip ViT checkpoint -> a ready :class:`ContrastiveModule` (eval mode).

    Args:
        model_name: open_clip's name of the architecture (``ViT-B-32``, ``ViT-B-16-quickgelu``,
            ...); the shapes come from the weights, the heads and the activation from open_clip's
            config of that name when open_clip is installed (else heads of width 64, QuickGELU
            for names ending in ``-quickgelu``).
        checkpoint_path: a local file: an OpenAI TorchScript archive, a state dict, an open_clip
            training checkpoint or a ``.safetensors`` file.
        quick_gelu: force the activation (None: QuickGELU for OpenAI archives and ``-quickgelu`` names).
    """
    return _import(model_name, checkpoint_path, quick_gelu)[0]


def suite_checkpoint(model_name: str, checkpoint_path: str | Path, quick_gelu: bool | None = None) -> dict:
    """:func:`load_open_clip` as a suite checkpoint: weights plus the towers, the InfoNCE term and
    the inputs (CLIP tokenizer, CLIP preprocessing) as ``class_path`` configs, so that the analysis
    rebuilds it like a checkpoint of ``python -m experiments fit``."""
    model, architecture, scale = _import(model_name, checkpoint_path, quick_gelu)
    return {
        "state_dict": model.state_dict(),
        "hyper_parameters": {
            "vision_tower": architecture.vision_config(),
            "text_tower": architecture.text_config(),
            "terms": [infonce_config(scale)],
        },
        "datamodule_hyper_parameters": {
            "_class_path": "datamodules.inputs.ModelInputs",
            "tokenizer": {
                "class_path": "datamodules.tokenizer.CLIPTokenizer",
                "init_args": {"context_length": architecture.context_length},
            },
            "image_size": architecture.image_size,
        },
        "global_step": 0,
        "imported_from": {"model_name": model_name, "checkpoint": str(checkpoint_path)},
    }


def _import(model_name: str, checkpoint_path: str | Path, quick_gelu: bool | None):
    state, torchscript = read_state_dict(checkpoint_path)
    if is_cn_clip(state):
        raise UserError(
            f"{checkpoint_path} is a Chinese-CLIP checkpoint (bert.* text tower): name its architecture as "
            "cn_clip:VISION@TEXT, e.g. --model cn_clip:ViT-B-16@RoBERTa-wwm-ext-base-chinese"
        )
    config = open_clip_config(model_name)
    if quick_gelu is None:
        quick_gelu = torchscript or bool((config or {}).get("quick_gelu")) or "quickgelu" in model_name.lower()
    architecture = infer_architecture(state, quick_gelu, config)
    scale = float(state["logit_scale"].exp()) if "logit_scale" in state else 1 / 0.07
    vision, text = architecture.vision_config()["init_args"], architecture.text_config()["init_args"]
    term = infonce_config(scale)["init_args"]
    model = ContrastiveModule(VisionTower(**vision), TextTower(**text), [InfoNCE(**term)])
    load_weights(model, state, str(checkpoint_path))
    return model.eval(), architecture, scale


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m variants.pretrained", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        required=True,
        help="open_clip architecture name, e.g. ViT-B-32 or ViT-B-32-quickgelu; for Chinese-CLIP "
        "cn_clip:VISION@TEXT, e.g. cn_clip:ViT-B-16@RoBERTa-wwm-ext-base-chinese",
    )
    parser.add_argument(
        "--checkpoint", required=True, help="local OpenAI/open_clip/Chinese-CLIP weights (.pt, .bin, .safetensors)"
    )
    parser.add_argument("--out", required=True, help="the suite checkpoint to write, e.g. runs/imported/vit-b-32.ckpt")
    parser.add_argument("--quick-gelu", action=argparse.BooleanOptionalAction, default=None,
                        help="force QuickGELU on or off (default: on for OpenAI archives and -quickgelu names)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.model.startswith("cn_clip:"):
        if args.quick_gelu is not None:
            raise UserError("--quick-gelu does not apply to Chinese-CLIP, whose vision tower always uses QuickGELU")
        checkpoint = cn_clip.suite_checkpoint(*cn_clip.parse_model_name(args.model), args.checkpoint)
    else:
        checkpoint = suite_checkpoint(args.model, args.checkpoint, args.quick_gelu)
    out = save_torch(args.out, checkpoint)  # whole or not at all: a reader never sees half a file
    towers = checkpoint["hyper_parameters"]
    vision, text = towers["vision_tower"]["init_args"], towers["text_tower"]["init_args"]
    bert = {k: v for k, v in (text.get("config") or {}).items() if k.startswith(("hidden_size", "num_"))}
    print(
        f"wrote {out}: {vision['model_name']} {vision['model_kwargs']}"
        f"{f', BERT {bert}' if bert else ''}, "
        f"logit scale {1 / towers['terms'][0]['init_args']['init_temperature']:.2f}\n"
        f"analyse it:   python -m analysis report --ckpt {out}\n"
        f"fine-tune it: --model.init_from {out} with towers of the same shapes"
    )


if __name__ == "__main__":
    exit_on_user_error(main)
