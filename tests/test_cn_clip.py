"""Importing Chinese-CLIP (cn_clip) checkpoints: the suite's towers give cn_clip's embeddings.

cn_clip (the dev extra) builds the reference models from its own configs with random weights;
nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

if importlib.util.find_spec("cn_clip") is None or importlib.util.find_spec("transformers") is None:
    pytest.skip("needs cn_clip and transformers (the dev extra)", allow_module_level=True)

import cn_clip.clip as cn
from cn_clip.clip.model import CLIP

from common.errors import UserError
from variants.cn_clip import (
    REFUSED,
    TEXT_CONFIGS,
    VISION_CONFIGS,
    load_cn_clip,
    parse_model_name,
    text_tower_config,
    vision_tower_config,
)
from variants.hf_text import HFTextTower
from variants.module import ContrastiveModule
from variants.objectives import InfoNCE
from variants.towers import VisionTower
from variants.weights import vit_tower_config

from helpers import CONFIGS

MODEL_CONFIGS = Path(cn.__file__).parent / "model_configs"
TEXTS = [
    "一只猫的照片",
    "a photo of a dog",
    "两个红色的正方形和一个蓝色的圆",
    "",
    "哇！！今天天气真好，不是吗？ What a day!",
    "这是一段很长的文字，" * 10,  # past the 52-token context: truncated, still ends with [SEP]
]


def _perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Noise on every parameter, so LayerNorm gains, biases, the class token and the logit scale all
    differ from their initial values and a mis-mapped one shows. Eval mode, float32."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    return model.float().eval()


def _cn_clip_model(vision: str, text: str) -> torch.nn.Module:
    """cn_clip's CLIP from its own configs, merged as ``cn_clip.clip.utils.create_model`` merges
    them, without its conversion to fp16."""
    info = json.loads((MODEL_CONFIGS / f"{vision}.json").read_text())
    info |= json.loads((MODEL_CONFIGS / f"{text}.json").read_text())
    torch.manual_seed(0)
    return _perturbed(CLIP(**info))


def _small_cn_clip() -> torch.nn.Module:
    """cn_clip's layout, small: a 32 px ViT (patch 8, width 64, 2 heads of 32, 2 layers) and a
    2-layer BERT of width 64 over cn_clip's 21,128-token vocabulary."""
    torch.manual_seed(0)
    model = CLIP(
        embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8, vision_head_width=32,
        vocab_size=21128, text_attention_probs_dropout_prob=0.1, text_hidden_act="gelu", text_hidden_dropout_prob=0.1,
        text_hidden_size=64, text_initializer_range=0.02, text_intermediate_size=128, text_max_position_embeddings=64,
        text_num_attention_heads=2, text_num_hidden_layers=2, text_type_vocab_size=2,
    )  # fmt: skip
    return _perturbed(model)


def _small_towers() -> tuple[VisionTower, HFTextTower]:
    vision = VisionTower(**vit_tower_config(32, 8, 64, 2, 2, 4.0, True, 32)["init_args"])
    bert = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
            "max_position_embeddings": 64, "layer_norm_eps": 1e-12}  # fmt: skip
    return vision, HFTextTower(21128, 52, embed_dim=32, config=bert)


def _save(reference: torch.nn.Module, path: Path, flash: bool = False) -> Path:
    """As cn_clip's training saves: ``{"state_dict": ...}`` with DDP's ``module.`` prefixes."""
    state = dict(reference.state_dict())
    if flash:  # cn_clip's own conversion to its FlashAttention layout (packed Wqkv)
        state = cn.convert_state_dict(state)
    torch.save({"epoch": 1, "step": 10, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    return path


def _max_differences(reference: torch.nn.Module, model: ContrastiveModule, image_size: int) -> tuple[float, float]:
    # The same pixels, normalised as cn_clip normalises them, go to both; the same token ids too.
    images = torch.randn(4, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    ids = cn.tokenize(TEXTS)
    with torch.no_grad():
        ref_image, ref_text = reference.encode_image(images), reference.encode_text(ids)
        ref_image, ref_text = (
            ref_image / ref_image.norm(dim=-1, keepdim=True),
            ref_text / ref_text.norm(dim=-1, keepdim=True),
        )
        image_diff = (ref_image - model.encode_image(images)).abs().max()
        text_diff = (ref_text - model.encode_text(ids)).abs().max()
    return float(image_diff), float(text_diff)


def _logit_scale(model: ContrastiveModule) -> float:
    return float(next(iter(model.terms.values())).logit_scale().detach())


def test_the_architecture_tables_are_cn_clips_configs():
    for path in sorted(MODEL_CONFIGS.glob("*.json")):
        config = json.loads(path.read_text())
        if path.stem in REFUSED:
            assert path.stem not in VISION_CONFIGS and path.stem not in TEXT_CONFIGS
        else:
            assert (VISION_CONFIGS | TEXT_CONFIGS)[path.stem] == config, path.stem
    vision = vision_tower_config("ViT-H-14")["init_args"]
    assert vision["model_kwargs"]["num_heads"] == 16 and vision["model_kwargs"]["act_layer"] == "quick_gelu"
    assert text_tower_config("ViT-H-14", "RoBERTa-wwm-ext-large-chinese")["init_args"]["embed_dim"] == 1024


@pytest.mark.parametrize("layout", ["standard", "flash_attention"])
def test_init_from_a_cn_clip_checkpoint_gives_cn_clips_embeddings(tmp_path, layout):
    """A small model of cn_clip's layout into towers of its shapes with model.init_from, from a
    training checkpoint in the standard layout and in cn_clip's FlashAttention layout."""
    reference = _small_cn_clip()
    path = _save(reference, tmp_path / "cn.pt", flash=layout == "flash_attention")
    model = ContrastiveModule(*_small_towers(), [InfoNCE()], init_from=str(path)).eval()
    image_diff, text_diff = _max_differences(reference, model, 32)
    assert image_diff <= 1e-5 and text_diff <= 1e-5, (image_diff, text_diff)
    assert _logit_scale(model) == pytest.approx(float(reference.logit_scale.detach().exp()), rel=1e-6)


def test_init_from_into_towers_of_other_shapes_lists_the_keys(tmp_path):
    path = _save(_small_cn_clip(), tmp_path / "cn.pt")
    vision, _ = _small_towers()
    text = HFTextTower(21128, 52, embed_dim=32, config={"hidden_size": 64, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "intermediate_size": 128, "max_position_embeddings": 64})  # fmt: skip
    with pytest.raises(UserError, match=r"text_tower unexpected keys model.encoder.layer.1"):
        ContrastiveModule(vision, text, [InfoNCE()], init_from=str(path))


def test_unsupported_names_and_layouts_are_one_line_errors(tmp_path):
    for call, match in [
        (lambda: load_cn_clip("RN50", "RBT3-chinese", tmp_path / "x.pt"), "cn_clip's RN50 cannot be imported: .*ModifiedResNet.*supported: ViT-B-16, ViT-B-32"),
        (lambda: load_cn_clip("ViT-B-16", "RBT6-chinese", tmp_path / "x.pt"), "unknown cn_clip text architecture 'RBT6-chinese'; supported: RoBERTa"),
        (lambda: parse_model_name("cn_clip:ViT-B-32"), "cn_clip released no ViT-B-32 model: name its text tower"),
        (lambda: parse_model_name("cn_clip:RN50@RBT3-chinese"), "RN50 cannot be imported"),
    ]:  # fmt: skip
        with pytest.raises(UserError, match=match) as error:
            call()
        assert "\n" not in str(error.value)
    assert parse_model_name("cn_clip:ViT-B-16") == ("ViT-B-16", "RoBERTa-wwm-ext-base-chinese")
    assert parse_model_name("cn_clip:ViT-B-16:RBT3-chinese") == parse_model_name("cn_clip:ViT-B-16@RBT3-chinese")
    # A Chinese-CLIP RN50 checkpoint given to model.init_from.
    resnet = {"visual.layer1.0.conv1.weight": torch.zeros(1), "bert.embeddings.word_embeddings.weight": torch.zeros(1)}
    torch.save({"state_dict": resnet}, tmp_path / "rn50.pt")
    with pytest.raises(UserError, match=r"has a ModifiedResNet \(RN50\) vision transformer; only its ViT"):
        ContrastiveModule(*_small_towers(), [InfoNCE()], init_from=str(tmp_path / "rn50.pt"))


def test_the_import_command_names_the_other_kind_of_checkpoint(tmp_path):
    from variants.pretrained import load_open_clip, main

    path = _save(_small_cn_clip(), tmp_path / "cn.pt")
    with pytest.raises(UserError, match="is a Chinese-CLIP checkpoint .* --model cn_clip:ViT-B-16@"):
        load_open_clip("ViT-B-16", path)
    with pytest.raises(UserError, match="--quick-gelu does not apply to Chinese-CLIP"):
        main(["--model", "cn_clip:ViT-B-16", "--checkpoint", str(path), "--out", str(tmp_path / "x"), "--quick-gelu"])


@pytest.mark.slow
@pytest.mark.parametrize("text", ["RBT3-chinese", "RoBERTa-wwm-ext-base-chinese"])
def test_vit_b16_import_gives_cn_clips_embeddings(tmp_path, text):
    """Full-size ViT-B-16 with RBT3 and with RoBERTa-wwm-ext-base (cn_clip's released pairing):
    imported by load_cn_clip and, with model.init_from, into towers built from the fine-tuning
    preset (RoBERTa) or from the architecture names (RBT3); all give cn_clip's embeddings."""
    reference = _cn_clip_model("ViT-B-16", text)
    path = _save(reference, tmp_path / "cn.pt")
    model = load_cn_clip("ViT-B-16", text, path)
    image_diff, text_diff = _max_differences(reference, model, 224)
    print(f"ViT-B-16 + {text}: max |diff| image {image_diff:.2e}, text {text_diff:.2e}")
    assert image_diff <= 1e-5 and text_diff <= 1e-5, (image_diff, text_diff)
    assert _logit_scale(model) == pytest.approx(float(reference.logit_scale.detach().exp()), rel=1e-6)
    del model
    if text == "RoBERTa-wwm-ext-base-chinese":
        config = yaml.safe_load((CONFIGS / "pretrained" / "cn_clip_vit_b16.yaml").read_text())
        preset, embed_dim = config["model"], config["embed_dim"]  # the CLI links embed_dim to both towers
        vision = VisionTower(**preset["vision_tower"]["init_args"], embed_dim=embed_dim)
        # vocab_size and context_length: linked from the data's BertTokenizer(vocab="cn_clip") by the CLI
        towers = (vision, HFTextTower(21128, 52, **preset["text_tower"]["init_args"], embed_dim=embed_dim))
    else:
        towers = (
            VisionTower(**vision_tower_config("ViT-B-16")["init_args"]),
            HFTextTower(**text_tower_config("ViT-B-16", text)["init_args"]),
        )
    fine_tuned = ContrastiveModule(*towers, [InfoNCE()], init_from=str(path)).eval()
    assert max(_max_differences(reference, fine_tuned, 224)) <= 1e-5
    assert _logit_scale(fine_tuned) == pytest.approx(float(reference.logit_scale.detach().exp()), rel=1e-6)


@pytest.mark.slow
def test_suite_checkpoint_is_rebuilt_by_the_analysis(tmp_path):
    """`python -m variants.pretrained --model cn_clip:...` writes a checkpoint the analysis rebuilds:
    the same embeddings, cn_clip's tokenizer (BERT WordPiece, cn_clip's vocab, 52 tokens), 224 px."""
    pytest.importorskip("datamodules.tokenizer.bert")
    from analysis.checkpoint import load_checkpoint
    from variants.pretrained import main

    reference = _cn_clip_model("ViT-B-32", "RBT3-chinese")
    path = _save(reference, tmp_path / "cn.pt")
    main(["--model", "cn_clip:ViT-B-32@RBT3-chinese", "--checkpoint", str(path), "--out", str(tmp_path / "cn.ckpt")])
    loaded = load_checkpoint(tmp_path / "cn.ckpt")
    assert type(loaded.tokenizer).__name__ == "BertTokenizer"
    assert torch.equal(loaded.tokenizer(TEXTS), cn.tokenize(TEXTS))
    assert loaded.image_transform.image_size == 224
    assert max(_max_differences(reference, loaded.model, 224)) <= 1e-5
