"""Importing OpenAI CLIP / open_clip weights: the suite's towers give open_clip's embeddings.

open_clip (the dev extra) builds the reference models with random weights; nothing is downloaded.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import yaml

from common.errors import UserError
from variants.module import ContrastiveModule
from variants.objectives import InfoNCE, TokenwiseInfoNCE
from variants.pretrained import load_open_clip, main
from variants.towers import TextTower, VisionTower
from variants.weights import infer_architecture, read_state_dict

from helpers import CONFIGS

open_clip = pytest.importorskip("open_clip")

TEXTS = ["a photo of a cat!", "a dog", "two red squares and a blue circle", "", "wow!! what a day, isn't it?"]


def _perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights plus noise on every parameter, so LayerNorm gains, biases, the class token
    and the logit scale all differ from their initial values and a mis-mapped one shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def _small_open_clip(
    quick_gelu: bool = True, width: int = 128, head_width: int = 64, text_heads: int = 2
) -> torch.nn.Module:
    """An OpenAI-layout CLIP ViT, small: 32 px, patch 8, 2 + 2 layers, CLIP's 49408 vocabulary."""
    torch.manual_seed(0)
    return _perturbed(
        open_clip.CLIP(
            embed_dim=64,
            vision_cfg={"layers": 2, "width": width, "patch_size": 8, "image_size": 32, "head_width": head_width},
            text_cfg={"context_length": 77, "vocab_size": 49408, "width": 128, "heads": text_heads, "layers": 2},
            quick_gelu=quick_gelu,
        )
    )


def _max_differences(reference: torch.nn.Module, model: ContrastiveModule, image_size: int) -> tuple[float, float]:
    images = torch.randn(4, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    ids = open_clip.tokenize(TEXTS)
    with torch.no_grad():
        image_diff = (reference.encode_image(images, normalize=True) - model.encode_image(images)).abs().max()
        text_diff = (reference.encode_text(ids, normalize=True) - model.encode_text(ids)).abs().max()
    return float(image_diff), float(text_diff)


def _logit_scale(model: ContrastiveModule) -> float:
    return float(next(iter(model.terms.values())).logit_scale().detach())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-32-quickgelu"])
def test_vit_b32_import_gives_open_clips_embeddings(tmp_path, name):
    """open_clip's ViT-B-32 (GELU) and OpenAI's architecture (QuickGELU): imported by load_open_clip,
    and (OpenAI's) built from the fine-tuning preset's towers with model.init_from; all give
    open_clip's embeddings."""
    reference = _perturbed(open_clip.create_model(name))
    path = tmp_path / "vit-b-32.pt"
    torch.save(reference.state_dict(), path)
    model = load_open_clip(name, path)
    image_diff, text_diff = _max_differences(reference, model, 224)
    assert image_diff <= 1e-5 and text_diff <= 1e-5, (image_diff, text_diff)
    assert _logit_scale(model) == pytest.approx(float(reference.logit_scale.exp()), rel=1e-6)
    assert model.vision_tower.backbone.patch_embed.proj.weight.shape == (768, 3, 32, 32)
    del model
    if name != "ViT-B-32-quickgelu":
        return
    config = yaml.safe_load((CONFIGS / "pretrained" / "openai_vit_b32.yaml").read_text())
    preset, embed_dim = config["model"], config["embed_dim"]  # the CLI links embed_dim to both towers
    vision = VisionTower(**preset["vision_tower"]["init_args"], embed_dim=embed_dim)
    text = TextTower(vocab_size=49408, context_length=77, **preset["text_tower"]["init_args"], embed_dim=embed_dim)
    fine_tuned = ContrastiveModule(vision, text, [InfoNCE()], init_from=str(path)).eval()
    assert max(_max_differences(reference, fine_tuned, 224)) <= 1e-5
    assert _logit_scale(fine_tuned) == pytest.approx(float(reference.logit_scale.exp()), rel=1e-6)


@pytest.mark.parametrize("layout", ["torchscript", "training_checkpoint", "safetensors", "gelu_state_dict"])
def test_import_from_each_file_layout(tmp_path, layout):
    reference = _small_open_clip(quick_gelu=layout != "gelu_state_dict")
    path = tmp_path / f"model.{'safetensors' if layout == 'safetensors' else 'pt'}"
    if layout == "torchscript":  # OpenAI's released files are traced TorchScript archives
        images, ids = torch.randn(2, 3, 32, 32), open_clip.tokenize(TEXTS[:2])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.trace(reference, (images, ids), check_trace=False), str(path))
        name = "ViT-small"  # QuickGELU must come from the archive being OpenAI's format
    elif layout == "training_checkpoint":  # open_clip's training checkpoints, saved from DDP
        state = {f"module.{k}": v for k, v in reference.state_dict().items()}
        torch.save({"epoch": 3, "state_dict": state}, path)
        name = "ViT-small-quickgelu"
    elif layout == "gelu_state_dict":  # open_clip's own configs (laion weights) use GELU
        torch.save(reference.state_dict(), path)
        name = "ViT-small"
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
        name = "ViT-small-quickgelu"
    model = load_open_clip(name, path)
    image_diff, text_diff = _max_differences(reference, model, 32)
    assert image_diff <= 1e-5 and text_diff <= 1e-5, (image_diff, text_diff)
    assert _logit_scale(model) == pytest.approx(float(reference.logit_scale.exp()), rel=1e-6)


def test_activation_is_not_guessed_from_the_weights(tmp_path):
    # The weights cannot tell GELU from QuickGELU: the wrong choice loads fine and is measurably off,
    # which is why the name (or the archive format) decides and the choice can be forced.
    reference = _small_open_clip(quick_gelu=True)
    path = tmp_path / "model.pt"
    torch.save(reference.state_dict(), path)
    wrong = load_open_clip("ViT-small", path)
    assert min(_max_differences(reference, wrong, 32)) > 1e-3
    forced = load_open_clip("ViT-small", path, quick_gelu=True)
    assert max(_max_differences(reference, forced, 32)) <= 1e-5


def test_heads_come_from_open_clips_config_of_the_name(tmp_path):
    # ViT-H-14's heads are 80 wide (its text tower has 16 heads): shapes cannot tell, the config
    # of the name does. A small model with those head widths imports exactly under that name.
    reference = _small_open_clip(quick_gelu=False, width=320, head_width=80, text_heads=16)
    torch.save(reference.state_dict(), tmp_path / "model.pt")
    model = load_open_clip("ViT-H-14", tmp_path / "model.pt")
    assert model.vision_tower.backbone.blocks[0].attn.num_heads == 4 and model.text_tower.blocks[0].attn.num_heads == 16
    assert max(_max_differences(reference, model, 32)) <= 1e-5
    with pytest.raises(UserError, match="ViT-B-16-SigLIP uses .*timm_model_name"):
        load_open_clip("ViT-B-16-SigLIP", tmp_path / "model.pt")


def test_unsupported_layouts_and_bad_files_are_named(tmp_path):
    resnet = {"visual.layer1.0.conv1.weight": torch.zeros(1), "token_embedding.weight": torch.zeros(1)}
    torch.save(resnet, tmp_path / "rn50.pt")
    with pytest.raises(UserError, match="ModifiedResNet"):
        load_open_clip("RN50", tmp_path / "rn50.pt")
    with pytest.raises(UserError, match="checkpoint not found"):
        load_open_clip("ViT-B-32", tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_open_clip("ViT-B-32", tmp_path / "junk.pt")
    import zipfile

    with zipfile.ZipFile(tmp_path / "torn.pt", "w") as archive:  # looks like TorchScript, is not
        archive.writestr("torn/code/__torch__.py", "x")
        archive.writestr("torn/constants.pkl", b"")
    with pytest.raises(UserError, match="cannot read checkpoint .*torn.pt"):
        load_open_clip("ViT-B-32", tmp_path / "torn.pt")
    vision_only = {
        k: v
        for k, v in _small_open_clip().state_dict().items()
        if k.startswith("visual.") or k == "token_embedding.weight"
    }
    torch.save(vision_only, tmp_path / "vision.pt")
    with pytest.raises(UserError, match="not a whole CLIP model: it has no text_projection"):
        load_open_clip("ViT-small", tmp_path / "vision.pt")


def test_init_from_sets_only_learned_softmax_temperatures(tmp_path):
    from variants.objectives import Sigmoid

    reference = _small_open_clip()
    with torch.no_grad():
        reference.logit_scale.fill_(math.log(150.0))  # above InfoNCE's default cap of 100
    torch.save(reference.state_dict(), tmp_path / "model.pt")
    architecture = infer_architecture(read_state_dict(tmp_path / "model.pt")[0], quick_gelu=True)
    terms = [InfoNCE(), InfoNCE(init_temperature=0.5, learn_temperature=False), Sigmoid()]
    sigmoid_before = float(terms[2].logit_scale().detach())
    model = ContrastiveModule(
        VisionTower(**architecture.vision_config()["init_args"]),
        TextTower(**architecture.text_config()["init_args"]),
        terms,
        init_from=str(tmp_path / "model.pt"),
    )
    learned, fixed, sigmoid = (float(t.logit_scale().detach()) for t in model.terms.values())
    assert learned == pytest.approx(100.0)  # CLIP's scale, clamped to the term's cap
    assert fixed == pytest.approx(2.0) and sigmoid == pytest.approx(sigmoid_before)


def test_init_from_lists_mismatching_keys(tmp_path):
    reference = _small_open_clip()
    torch.save(reference.state_dict(), tmp_path / "model.pt")
    state, _ = read_state_dict(tmp_path / "model.pt")
    architecture = infer_architecture(state)
    vision = architecture.vision_config()["init_args"]
    text = dict(architecture.text_config()["init_args"], width=256, heads=4)  # not the checkpoint's shape
    with pytest.raises(UserError, match=r"text_tower shape mismatch: blocks.0.attn.proj.bias"):
        ContrastiveModule(VisionTower(**vision), TextTower(**text), [InfoNCE()], init_from=str(tmp_path / "model.pt"))


def test_init_from_fine_tunes_with_another_objective(tmp_path):
    # Any term can start from imported towers: FILIP's token-wise term on the imported model,
    # one optimizer step, and the towers' weights began exactly at the checkpoint's.
    reference = _small_open_clip()
    torch.save(reference.state_dict(), tmp_path / "model.pt")
    architecture = infer_architecture(read_state_dict(tmp_path / "model.pt")[0], quick_gelu=True)
    model = ContrastiveModule(
        VisionTower(**architecture.vision_config()["init_args"]),
        TextTower(**architecture.text_config()["init_args"]),
        [TokenwiseInfoNCE()],
        init_from=str(tmp_path / "model.pt"),
    )
    imported = load_open_clip("ViT-small-quickgelu", tmp_path / "model.pt")
    for name, value in imported.vision_tower.state_dict().items():
        assert torch.equal(value, model.vision_tower.state_dict()[name]), name
    batch = {"image": torch.randn(4, 3, 32, 32), "text": open_clip.tokenize(TEXTS[:4])}
    loss = model.terms[next(iter(model.terms))](model.encode(batch))["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert model.vision_tower.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.text_tower.token_embedding.weight.grad.abs().sum() > 0


@pytest.mark.cli
def test_suite_checkpoint_is_analysed_like_a_trained_run(tmp_path):
    from analysis.checkpoint import load_checkpoint

    reference = _small_open_clip()
    torch.save(reference.state_dict(), tmp_path / "model.pt")
    main(
        [
            "--model",
            "ViT-small-quickgelu",
            "--checkpoint",
            str(tmp_path / "model.pt"),
            "--out",
            str(tmp_path / "imported.ckpt"),
        ]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imported.ckpt", "model.pt"]  # no temporary left
    loaded = load_checkpoint(tmp_path / "imported.ckpt")
    assert type(loaded.tokenizer).__name__ == "CLIPTokenizer"
    assert torch.equal(loaded.tokenizer(TEXTS), open_clip.tokenize(TEXTS))
    image_diff, text_diff = _max_differences(reference, loaded.model, 32)
    assert image_diff <= 1e-5 and text_diff <= 1e-5
    assert loaded.image_transform.image_size == 32 and loaded.image_transform.mean[0] == pytest.approx(0.48145466)
    # Every analysis command, through the report (ShapesWorld rendered at the model's 32 px).
    from analysis.__main__ import run as analysis

    metrics = analysis(["report", "--ckpt", str(tmp_path / "imported.ckpt"), "--samples", "20", "--tsne-points", "100",
                        "--no-linear-probe", "--no-tensorboard", "--out", str(tmp_path / "report")])  # fmt: skip
    assert (tmp_path / "report" / "report.md").is_file()
    metrics = metrics["metrics"]
    assert 0.0 <= metrics["zeroshot/shapesworld/shape/top1"] <= 1.0 and "geometry/modality_gap" in metrics
    assert "probes/shapesworld/negation/acc" in metrics
    # The explanations of a ViT: Grad-CAM on the last block's tokens, relevance, word-patch alignment.
    assert all(0 <= metrics[f"explain/{m}/pointing"] <= 1 for m in ("gradcam", "relevance", "alignment"))
    assert (tmp_path / "report" / "figures" / "explain.png").stat().st_size > 5000


@pytest.mark.cli
def test_cli_fine_tunes_imported_weights_on_image_text_data(tmp_path):
    """`python -m experiments fit` with FILIP, towers of the imported shapes, model.init_from and
    the csv data preset (CLIP tokenizer): it trains, and with lr 0 the saved towers are exactly
    the imported ones (init_from took effect and nothing else touched them)."""
    from helpers.cli import run_cli
    from helpers.image_text import make_csv

    reference = _small_open_clip()
    torch.save(reference.state_dict(), tmp_path / "model.pt")
    architecture = infer_architecture(read_state_dict(tmp_path / "model.pt")[0], quick_gelu=True)
    text = {
        k: v
        for k, v in architecture.text_config()["init_args"].items()
        if k not in ("vocab_size", "context_length", "embed_dim")
    }
    vision = architecture.vision_config()
    vision["init_args"] = {k: v for k, v in vision["init_args"].items() if k != "embed_dim"}
    pairs = make_csv(tmp_path / "data")
    overlay = {
        "embed_dim": architecture.embed_dim,  # linked to both towers by the CLI
        "model": {
            "vision_tower": vision,
            "text_tower": {"class_path": "variants.towers.TextTower", "init_args": text},
            "init_from": str(tmp_path / "model.pt"), "lr": 0.0, "warmup_steps": 1,
        },
        "data": {"init_args": {
            "train_files": str(pairs), "image_size": 32, "batch_size": 4, "num_workers": 0,
            "cache_dir": str(tmp_path / "hf-cache"),
        }},
        "trainer": {"max_steps": 2, "log_every_n_steps": 1, "enable_progress_bar": False, "precision": "32-true"},
    }  # fmt: skip
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    args = ("fit", "--config", str(CONFIGS / "filip.yaml"), "--config", str(CONFIGS / "data" / "image_text_csv.yaml"),
            "--config", str(tmp_path / "overlay.yaml"))  # fmt: skip
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (checkpoint,) = (tmp_path / "runs").glob("*/version_0/checkpoints/last.ckpt")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 2
    imported = load_open_clip("ViT-small-quickgelu", tmp_path / "model.pt").state_dict()
    towers = [k for k in imported if k.startswith(("vision_tower.", "text_tower."))]
    assert towers and all(torch.equal(saved["state_dict"][k], imported[k]) for k in towers)

    # Resuming takes every weight from the run's checkpoint: the init_from file is not needed.
    (tmp_path / "model.pt").unlink()
    result = run_cli(
        *args,
        "--ckpt_path",
        "last",
        "--trainer.logger.init_args.version",
        "0",
        "--trainer.max_steps",
        "3",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"] == 3
