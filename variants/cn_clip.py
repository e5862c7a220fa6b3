"""Import Chinese-CLIP (``cn_clip``, Yang et al. 2022, arXiv 2211.01335) checkpoints (local files).

A Chinese-CLIP model is OpenAI's ViT (QuickGELU, pre-LayerNorm, class token) and a Chinese
RoBERTa-wwm-ext (a BERT) pooled at [CLS] and projected by ``text_projection``. The ViT becomes a
timm CLIP ViT inside a :class:`~variants.towers.VisionTower` (the key mapping of OpenAI's
weights), the BERT a ``transformers.BertModel`` inside a :class:`~variants.hf_text.HFTextTower`,
and the logit scale the temperature of an :class:`~variants.objectives.InfoNCE` term, so that

    model = load_cn_clip("ViT-B-16", "RoBERTa-wwm-ext-base-chinese", "/models/clip_cn_vit-b-16.pt")
    model.encode_image(images), model.encode_text(cn_clip.clip.tokenize(texts))

give cn_clip's embeddings (tested to 1e-5 with random weights for ViT-B-16 with RBT3 and with
RoBERTa-wwm-ext-base). The shapes come from the architecture names (cn_clip's
``model_configs/<name>.json``, copied here: cn_clip need not be installed to import): a vision name
(ViT-B-16, ViT-B-32, ViT-L-14, ViT-L-14-336, ViT-H-14) and a text name
(RoBERTa-wwm-ext-base-chinese, RoBERTa-wwm-ext-large-chinese, RBT3-chinese). RN50 is refused:
its ModifiedResNet vision tower has no key mapping into the suite's VisionTower.

Files are read with ``torch.load(weights_only=True)``: cn_clip's training checkpoints and released
files (``{"state_dict": {"module.visual...", "module.bert...", ...}}``), plain state dicts,
safetensors. Nothing is downloaded. The command

    python -m variants.pretrained --model cn_clip:ViT-B-16@RoBERTa-wwm-ext-base-chinese --checkpoint /models/clip_cn_vit-b-16.pt --out runs/imported/cn-clip-vit-b-16.ckpt

(``cn_clip:ViT-B-16`` alone takes the text tower of cn_clip's released model of that name) writes
a suite checkpoint that every ``python -m analysis`` command reads (BERT tokenizer with cn_clip's
vocabulary, context 52, 224 px with CLIP's normalisation), and ``ContrastiveModule(init_from=...)``
fine-tunes a cn_clip checkpoint into towers of the same shapes
(``experiments/configs/pretrained/cn_clip_vit_b16.yaml``).
"""

from __future__ import annotations

from pathlib import Path

from common.errors import UserError
from variants.hf_text import HFTextTower
from variants.module import ContrastiveModule
from variants.objectives import InfoNCE
from variants.towers import VisionTower
from variants.weights import infonce_config, is_cn_clip, load_weights, read_state_dict, vit_tower_config

#: cn_clip's vision configs (``cn_clip/clip/model_configs``) that the import reproduces.
VISION_CONFIGS: dict[str, dict] = {
    "ViT-B-16": {"embed_dim": 512, "image_resolution": 224, "vision_layers": 12, "vision_width": 768,
                 "vision_patch_size": 16},
    "ViT-B-32": {"embed_dim": 512, "image_resolution": 224, "vision_layers": 12, "vision_width": 768,
                 "vision_patch_size": 32},
    "ViT-L-14": {"embed_dim": 768, "image_resolution": 224, "vision_layers": 24, "vision_width": 1024,
                 "vision_patch_size": 14},
    "ViT-L-14-336": {"embed_dim": 768, "image_resolution": 336, "vision_layers": 24, "vision_width": 1024,
                     "vision_patch_size": 14},
    "ViT-H-14": {"embed_dim": 1024, "image_resolution": 224, "vision_layers": 32, "vision_width": 1280,
                 "vision_head_width": 80, "vision_patch_size": 14},
}  # fmt: skip

_BERT_COMMON = {"vocab_size": 21128, "text_attention_probs_dropout_prob": 0.1, "text_hidden_act": "gelu",
                "text_hidden_dropout_prob": 0.1, "text_initializer_range": 0.02, "text_max_position_embeddings": 512,
                "text_type_vocab_size": 2}  # fmt: skip

#: cn_clip's text configs, all BERT-layout (RoBERTa-wwm-ext is a BERT trained with whole-word masking).
TEXT_CONFIGS: dict[str, dict] = {
    "RoBERTa-wwm-ext-base-chinese": _BERT_COMMON | {"text_hidden_size": 768, "text_intermediate_size": 3072,
                                                    "text_num_attention_heads": 12, "text_num_hidden_layers": 12},
    "RoBERTa-wwm-ext-large-chinese": _BERT_COMMON | {"text_hidden_size": 1024, "text_intermediate_size": 4096,
                                                     "text_num_attention_heads": 16, "text_num_hidden_layers": 24},
    "RBT3-chinese": _BERT_COMMON | {"text_hidden_size": 768, "text_intermediate_size": 3072,
                                    "text_num_attention_heads": 12, "text_num_hidden_layers": 3},
}  # fmt: skip

#: The text tower of cn_clip's released model of each vision name (``cn_clip.clip.utils._MODEL_INFO``).
RELEASED_TEXT = {
    "ViT-B-16": "RoBERTa-wwm-ext-base-chinese",
    "ViT-L-14": "RoBERTa-wwm-ext-base-chinese",
    "ViT-L-14-336": "RoBERTa-wwm-ext-base-chinese",
    "ViT-H-14": "RoBERTa-wwm-ext-large-chinese",
}

#: cn_clip architectures the import refuses, and why.
REFUSED = {
    "RN50": "its vision tower is CLIP's ModifiedResNet, which has no key mapping into the suite's VisionTower "
    "(only OpenAI-layout ViTs are mapped)",
}

#: cn_clip's context length (``cn_clip.clip.tokenize``'s default; all released models use it).
CONTEXT_LENGTH = 52


def vision_tower_config(vision: str) -> dict:
    """cn_clip's vision architecture ``vision`` as a VisionTower ``class_path`` config."""
    c = VISION_CONFIGS[_known(vision, VISION_CONFIGS, "vision")]
    width = c["vision_width"]
    return vit_tower_config(
        image_size=c["image_resolution"],
        patch_size=c["vision_patch_size"],
        width=width,
        depth=c["vision_layers"],
        heads=width // c.get("vision_head_width", 64),
        mlp_ratio=4.0,
        quick_gelu=True,  # cn_clip's ResidualAttentionBlock: QuickGELU, like OpenAI's
        embed_dim=c["embed_dim"],
    )


def bert_config(text: str) -> dict:
    """cn_clip's text architecture ``text`` as a ``transformers.BertConfig`` dict (the
    HFTextTower's ``config``), with cn_clip's LayerNorm epsilon (1e-12) and dropout (0.1)."""
    c = TEXT_CONFIGS[_known(text, TEXT_CONFIGS, "text")]
    return {
        "vocab_size": c["vocab_size"],
        "hidden_size": c["text_hidden_size"],
        "num_hidden_layers": c["text_num_hidden_layers"],
        "num_attention_heads": c["text_num_attention_heads"],
        "intermediate_size": c["text_intermediate_size"],
        "hidden_act": c["text_hidden_act"],
        "max_position_embeddings": c["text_max_position_embeddings"],
        "type_vocab_size": c["text_type_vocab_size"],
        "layer_norm_eps": 1e-12,
        "hidden_dropout_prob": c["text_hidden_dropout_prob"],
        "attention_probs_dropout_prob": c["text_attention_probs_dropout_prob"],
        "initializer_range": c["text_initializer_range"],
    }


def text_tower_config(vision: str, text: str) -> dict:
    """cn_clip's text architecture ``text`` (projected to ``vision``'s joint space) as an
    HFTextTower ``class_path`` config."""
    config = bert_config(text)
    init_args = {
        "vocab_size": config["vocab_size"],
        "context_length": CONTEXT_LENGTH,
        "embed_dim": VISION_CONFIGS[_known(vision, VISION_CONFIGS, "vision")]["embed_dim"],
        "config": config,
        "pad_id": 0,  # cn_clip's attention mask: text.ne([PAD]), and [PAD] is id 0
    }
    return {"class_path": "variants.hf_text.HFTextTower", "init_args": init_args}


def parse_model_name(name: str) -> tuple[str, str]:
    """``cn_clip:VISION@TEXT`` (or ``cn_clip:VISION:TEXT``; ``cn_clip:VISION`` for cn_clip's released
    pairing) -> (vision, text), both checked."""
    spec = name.removeprefix("cn_clip:")
    vision, _, text = spec.replace(":", "@", 1).partition("@")
    _known(vision, VISION_CONFIGS, "vision")
    if not text:
        if vision not in RELEASED_TEXT:
            raise UserError(
                f"cn_clip released no {vision} model: name its text tower, e.g. cn_clip:{vision}@RBT3-chinese"
            )
        text = RELEASED_TEXT[vision]
    _known(text, TEXT_CONFIGS, "text")
    return vision, text


def load_cn_clip(vision: str, text: str, checkpoint_path: str | Path) -> ContrastiveModule:
    """A Chinese-CLIP checkpoint -> a ready :class:`ContrastiveModule` (eval mode).

    Args:
        vision: cn_clip's vision architecture name (ViT-B-16, ViT-B-32, ViT-L-14, ViT-L-14-336, ViT-H-14).
        text: cn_clip's text architecture name (RoBERTa-wwm-ext-base-chinese,
            RoBERTa-wwm-ext-large-chinese, RBT3-chinese).
        checkpoint_path: a local file: a cn_clip training checkpoint or released model
            (``{"state_dict": {"module.<key>": ...}}``), a state dict, or ``.safetensors``.
    """
    return _import(vision, text, checkpoint_path)[0]


def suite_checkpoint(vision: str, text: str, checkpoint_path: str | Path) -> dict:
    """:func:`load_cn_clip` as a suite checkpoint: weights plus the towers, the InfoNCE term and the
    inputs (cn_clip's BERT tokenizer, 52 tokens; CLIP's normalisation at the model's resolution) as
    ``class_path`` configs, so that the analysis rebuilds it like a checkpoint of ``python -m experiments fit``."""
    model, scale = _import(vision, text, checkpoint_path)
    return {
        "state_dict": model.state_dict(),
        "hyper_parameters": {
            "vision_tower": vision_tower_config(vision),
            "text_tower": text_tower_config(vision, text),
            "terms": [infonce_config(scale)],
        },
        "datamodule_hyper_parameters": {
            "_class_path": "datamodules.inputs.ModelInputs",
            "tokenizer": {
                "class_path": "datamodules.tokenizer.bert.BertTokenizer",
                "init_args": {"vocab": "cn_clip", "context_length": CONTEXT_LENGTH},
            },
            "image_size": VISION_CONFIGS[vision]["image_resolution"],
        },
        "global_step": 0,
        "imported_from": {"model_name": f"cn_clip:{vision}@{text}", "checkpoint": str(checkpoint_path)},
    }


def _import(vision: str, text: str, checkpoint_path: str | Path) -> tuple[ContrastiveModule, float]:
    vision_args = vision_tower_config(vision)["init_args"]
    text_args = text_tower_config(vision, text)["init_args"]
    state, _ = read_state_dict(checkpoint_path)
    if not is_cn_clip(state):
        raise UserError(
            f"{checkpoint_path} is not a Chinese-CLIP checkpoint (no bert.* text tower); for OpenAI/open_clip "
            "weights use --model with an open_clip name, e.g. ViT-B-16"
        )
    scale = float(state["logit_scale"].exp()) if "logit_scale" in state else 1 / 0.07
    model = ContrastiveModule(
        VisionTower(**vision_args), HFTextTower(**text_args), [InfoNCE(**infonce_config(scale)["init_args"])]
    )
    load_weights(model, state, str(checkpoint_path))
    return model.eval(), scale


def _known(name: str, table: dict, role: str) -> str:
    if name in table:
        return name
    if name in REFUSED:
        raise UserError(f"cn_clip's {name} cannot be imported: {REFUSED[name]}; supported: {', '.join(table)}")
    raise UserError(f"unknown cn_clip {role} architecture '{name}'; supported: {', '.join(table)}")
