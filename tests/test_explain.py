"""Explanations: every method on a hand-built model whose answer is known, the pointing game's
scoring on synthetic maps, the pointing scenes' truth, and ``python -m analysis explain`` on
trained CLIP and FILIP checkpoints (the imported-weights ViT runs it in test_pretrained's report)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from analysis.explain.gradcam import gradcam
from analysis.explain.maps import available_methods, query_maps
from analysis.explain.pointing import score_map, upsample
from analysis.explain.relevance import relevance
from analysis.explain.target import text_record
from analysis.explain.words import check_caption, word_importance, word_spans
from common.errors import UserError
from datamodules.shapesworld import captions as lang
from datamodules.shapesworld.pointing import PointingScenes
from datamodules.shapesworld.world import COLORS, Scene, render
from datamodules.tokenizer.clip import CLIPTokenizer, default_vocab
from datamodules.tokenizer.word import WordTokenizer
from variants.module import ContrastiveModule
from variants.objectives import InfoNCE, TokenwiseInfoNCE
from variants.towers import Encoded, TextTower, TowerOutput, VisionTower, use_attention_kernel

from helpers.cli import FP32

EMBED = 8
WORDS = ["a", "red", "circle", "blue", "square"]
TOKENIZER = WordTokenizer(WORDS, context_length=8)


class PixelBackbone(nn.Module):
    """A "CNN" whose final feature map is the image itself (3 channels, full resolution), average-pooled:
    a pair's score then depends on exactly the pixels that are not black."""

    num_features = 3

    def __init__(self) -> None:
        super().__init__()
        self.global_pool = nn.AdaptiveAvgPool2d(1)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.global_pool(features).flatten(1)


def _model(backbone: nn.Module, width: int, terms: list | None = None) -> ContrastiveModule:
    torch.manual_seed(0)
    vision = VisionTower("resnet10t", embed_dim=EMBED, channels_last=False)
    text = TextTower(vocab_size=TOKENIZER.vocab_size, context_length=8, width=16, depth=1, heads=2, embed_dim=EMBED)
    model = ContrastiveModule(vision, text, terms or [InfoNCE()])
    vision.backbone, vision.token_dim = backbone, width
    vision.proj = nn.Linear(width, EMBED, bias=False)
    return model.eval().requires_grad_(False)


def _orthonormal(t: torch.Tensor) -> torch.Tensor:
    """A unit vector orthogonal to the unit vector ``t``."""
    u = torch.randn(t.shape, generator=torch.Generator().manual_seed(1))
    u = u - (u @ t) * t
    return u / u.norm()


def _caption_embedding(model: ContrastiveModule, caption: str) -> torch.Tensor:
    return text_record(model, TOKENIZER([caption], pad_to_context=False)).text[0]


def test_gradcam_peaks_at_the_only_pixel_that_raises_the_score() -> None:
    """Channel 0 projects onto the caption's embedding, channel 1 orthogonally: a pixel of channel 0
    raises the cosine, one of channel 1 lowers it. Grad-CAM marks the first and nothing else; with
    the projections swapped the map moves to the other pixel (it explains the caption, not the image)."""
    model = _model(PixelBackbone(), 3)
    ids = TOKENIZER(["a red circle"], pad_to_context=False)
    t = _caption_embedding(model, "a red circle")
    image = torch.zeros(1, 3, 8, 8)
    image[0, 0, 5, 2] = 1.0
    image[0, 1, 1, 6] = 1.0
    for evidence, other in (((5, 2), (1, 6)), ((1, 6), (5, 2))):
        channel = 0 if evidence == (5, 2) else 1
        weight = torch.zeros(EMBED, 3)
        weight[:, channel], weight[:, 1 - channel] = t, _orthonormal(t)
        model.vision_tower.proj.weight.copy_(weight)
        heat = query_maps(model, "gradcam", image, ids, [{"query": (1, 4)}])["query"][0]
        assert heat.shape == (8, 8)
        assert divmod(int(heat.argmax()), 8) == evidence and heat[evidence] > 0
        assert heat[other] == 0 and (heat > 0).sum() == 1


def _pointing_vit(raises: int, lowers: int) -> VisionTransformer:
    """A 1-block ViT (4 patches) whose class token attends to two patches, half each: the patch
    embedding is zero, so tokens are their position embeddings (class e0, patch ``raises`` e1,
    patch ``lowers`` e3, the others e2); the class token's query is 20 (e1 + e3), keys and values
    are the tokens themselves; no norms, no MLP."""
    vit = VisionTransformer(img_size=8, patch_size=4, embed_dim=4, depth=1, num_heads=1, mlp_ratio=1.0, num_classes=0)
    block = vit.blocks[0]
    block.norm1, block.norm2, vit.norm = nn.Identity(), nn.Identity(), nn.Identity()
    eye = torch.eye(4)
    with torch.no_grad():
        for parameter in vit.parameters():
            parameter.zero_()
        vit.cls_token[0, 0] = eye[0]
        vit.pos_embed[0, 1:] = eye[2]
        vit.pos_embed[0, 1 + raises], vit.pos_embed[0, 1 + lowers] = eye[1], eye[3]
        block.attn.qkv.weight[1, 0] = block.attn.qkv.weight[3, 0] = 20.0  # q = 20 (e1 + e3) from e0
        block.attn.qkv.weight[4:8] = eye  # k = x
        block.attn.qkv.weight[8:12] = eye  # v = x
        block.attn.proj.weight.copy_(eye)
    return vit


@pytest.mark.parametrize(("raises", "lowers"), [(0, 3), (3, 0), (1, 2)])
def test_relevance_marks_the_attended_patch_that_raises_the_score(raises: int, lowers: int) -> None:
    """The class token reads two patches equally (attention rollout cannot tell them apart); the
    projection sends what one carries (e1) onto the caption and what the other carries (e3), like
    the class token's own content and the unread patches, elsewhere. Chefer's gradient-weighted
    rule gives all the relevance to the first; the attention kernel is restored after."""
    model = _model(_pointing_vit(raises, lowers), 4)
    t = _caption_embedding(model, "a blue square")
    weight = torch.zeros(EMBED, 4)
    weight[:, 1], weight[:, 3], weight[:, 0], weight[:, 2] = t, -t, _orthonormal(t), -t
    model.vision_tower.proj.weight.copy_(weight)
    fused = model.vision_tower.backbone.blocks[0].attn.fused_attn
    model.vision_tower.backbone.set_grad_checkpointing(raises == 1)  # a checkpointed tower explains alike
    heat = relevance(model, torch.rand(2, 3, 8, 8), text_record(model, TOKENIZER(["a blue square"] * 2)))
    assert heat.shape == (2, 2, 2)
    for row in heat.flatten(1):
        assert int(row.argmax()) == raises and row[raises] > 0.1
        assert (row[[p for p in range(4) if p != raises]] == 0).all()
    assert model.vision_tower.backbone.blocks[0].attn.fused_attn == fused
    assert model.vision_tower.backbone.grad_checkpointing == (raises == 1)


def _reference_vit(vit: VisionTransformer, images: torch.Tensor) -> tuple[torch.Tensor, list, list]:
    """timm's ViT forward written out op by op: (final tokens, each block's attention
    probabilities [B, heads, N, N], each block's input tokens)."""
    x = vit.norm_pre(vit._pos_embed(vit.patch_embed(images)))
    attentions, inputs = [], []
    for block in vit.blocks:
        inputs.append(x)
        h = block.norm1(x)
        batch, n, width = h.shape
        heads = block.attn.num_heads
        q, k, v = block.attn.qkv(h).reshape(batch, n, 3, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)
        attention = ((q * block.attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        attentions.append(attention)
        x = x + block.ls1(block.attn.proj((attention @ v).transpose(1, 2).reshape(batch, n, width)))
        x = x + block.ls2(block.mlp(block.norm2(x)))
    return vit.norm(x), attentions, inputs


@pytest.mark.parametrize("scoring", ["clip", "filip"])
def test_relevance_and_vit_gradcam_equal_the_formulas_on_a_random_vit(scoring: str) -> None:
    """2 blocks x 2 heads, random weights: relevance is eq. 5-6 over the attention probabilities of
    the written-out forward (rows: the class token for CLIP, the mean of the patch rows for FILIP,
    whose score reads only patches); ViT Grad-CAM weights the last block's input patch tokens by
    their mean gradient."""
    torch.manual_seed(3)
    vit = VisionTransformer(img_size=12, patch_size=4, embed_dim=8, depth=2, num_heads=2, num_classes=0)
    term = TokenwiseInfoNCE(token_dim=4) if scoring == "filip" else InfoNCE()
    model = _model(vit, 8, [term])
    if scoring == "filip":
        term.image_proj = nn.Linear(8, 4, bias=False)
    use_attention_kernel(vit, "auto")
    images = torch.randn(3, 3, 12, 12)
    texts = text_record(model, TOKENIZER(["a red circle", "a blue square", "red"]))
    with torch.enable_grad():
        pixels = images.clone().requires_grad_(True)
        tokens, attentions, inputs = _reference_vit(vit, pixels)
        if scoring == "filip":
            i2t, _ = term.score(Encoded(image_tokens=tokens[:, 1:]), texts)
            logits = i2t.diagonal() * term.logit_scale()
        else:
            embedding = F.normalize(model.vision_tower.proj(tokens[:, 0]), dim=-1)
            logits = (embedding * texts.text).sum(dim=-1) * term.logit_scale()
        *attention_grads, input_grad = torch.autograd.grad(logits.sum(), [*attentions, inputs[-1]])
    expected = torch.eye(10).expand(3, 10, 10)  # the class token and 3 x 3 patches
    for attention, gradient in zip(attentions, attention_grads, strict=True):
        expected = expected + (gradient * attention).clamp(min=0).mean(dim=1) @ expected
    expected = expected[:, 1:, 1:].mean(dim=1) if scoring == "filip" else expected[:, 0, 1:]
    torch.testing.assert_close(relevance(model, images, texts), expected.reshape(3, 3, 3), atol=1e-5, rtol=1e-4)
    weights = input_grad[:, 1:].mean(dim=1, keepdim=True)
    expected_cam = (weights * inputs[-1][:, 1:]).sum(dim=-1).clamp(min=0).reshape(3, 3, 3)
    torch.testing.assert_close(gradcam(model, images, texts), expected_cam.detach(), atol=1e-5, rtol=1e-4)
    assert expected_cam.amax() > 0 and expected.amax() > expected.amin()  # nothing trivially zero or flat


def test_a_failing_explanation_leaves_the_tower_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hooks removed, attention kernel and checkpointing restored even when the pass raises."""
    import analysis.explain.relevance as module

    vit = VisionTransformer(img_size=8, patch_size=4, embed_dim=8, depth=2, num_heads=2, num_classes=0)
    model = _model(vit, 8)
    use_attention_kernel(vit, "auto")
    vit.set_grad_checkpointing(True)
    monkeypatch.setattr(module, "pair_logits", lambda *args: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        relevance(model, torch.rand(1, 3, 8, 8), text_record(model, TOKENIZER(["a red circle"])))
    for block in vit.blocks:
        assert not block.attn.attn_drop._forward_hooks and block.attn.attention_kernel == "auto"
    assert vit.grad_checkpointing


@pytest.mark.parametrize("space", ["filip", "clip"])
def test_alignment_picks_the_patch_that_matches_the_words(space: str) -> None:
    """Every text token projects onto e0 (the text tower's final LayerNorm outputs a constant b, the
    projection maps b to e0), the image tokens are the pixels, projected by the identity: the one
    pixel of channel 0 is each word's best patch, at its place. FILIP: the token-wise term's
    projections; CLIP: the towers' global ones."""
    term = TokenwiseInfoNCE(token_dim=3) if space == "filip" else InfoNCE()
    model = _model(PixelBackbone(), 3, [term])
    image_proj, text_proj = (
        (term.image_proj, term.text_proj) if space == "filip" else (model.vision_tower.proj, model.text_tower.proj)
    )
    if space == "filip":
        term.image_proj = image_proj = nn.Linear(3, 3, bias=False)
    else:
        model.vision_tower.proj = image_proj = nn.Linear(3, 3, bias=False)
        model.text_tower.proj = text_proj = nn.Linear(16, 3, bias=False)
    with torch.no_grad():
        image_proj.weight.copy_(torch.eye(3))
        model.text_tower.ln_final.weight.zero_()
        model.text_tower.ln_final.bias.copy_(torch.linspace(-1, 1, 16))
        bias = model.text_tower.ln_final.bias
        text_proj.weight.zero_()
        text_proj.weight[0] = bias / (bias @ bias)
    assert available_methods(model) == ["gradcam", "alignment"]
    image = torch.zeros(1, 3, 6, 6)
    image[0, 1] = 1.0  # every pixel is e1 ...
    image[0, :, 4, 1] = torch.tensor([1.0, 0.0, 0.0])  # ... but one, e0
    ids = TOKENIZER(["a red circle"], pad_to_context=False)
    maps = query_maps(model, "alignment", image, ids, [{"query": (1, 4), "color": (2, 3)}])
    assert set(maps) == {"query", "color"}
    for heat in maps.values():
        assert divmod(int(heat[0].argmax()), 6) == (4, 1)
        assert heat[0, 4, 1] == pytest.approx(1.0) and heat[0].flatten().sort().values[-2] == pytest.approx(
            0.0, abs=1e-6
        )


class BagOfWords(nn.Module):
    """A text tower whose embedding is the normalised sum of fixed word vectors."""

    def __init__(self, vectors: torch.Tensor) -> None:
        super().__init__()
        self.embedding = nn.Embedding.from_pretrained(vectors)
        self.proj = nn.Linear(1, 1)

    def forward(self, token_ids: torch.Tensor, return_tokens: bool = False) -> TowerOutput:
        return TowerOutput(F.normalize(self.embedding(token_ids).sum(dim=1), dim=-1), None, token_ids != 0)


def test_leave_one_word_out_finds_the_word_the_score_rests_on() -> None:
    """The image embeds to a; "red" is 3a, "circle" b (orthogonal), "a" a little of c: without "red"
    the cosine collapses (large positive importance), without "circle" it rises (negative)."""
    model = _model(PixelBackbone(), 3)
    a, b, c = torch.eye(EMBED)[:3]
    vectors = torch.zeros(TOKENIZER.vocab_size, EMBED)
    vocab = TOKENIZER.tokenizer.get_vocab()
    vectors[vocab["red"]], vectors[vocab["circle"]], vectors[vocab["a"]] = 3 * a, b, 0.1 * c
    model.text_tower = BagOfWords(vectors)
    model.vision_tower.proj.weight.copy_(torch.stack([a, b, c], dim=1))
    image = torch.zeros(3, 4, 4)
    image[0] = 1.0  # pooled features e0 -> embedding a
    importance = dict(word_importance(model, TOKENIZER, image, "a red circle"))
    assert list(importance) == ["a", "red", "circle"]
    assert importance["red"] > 0.5 and importance["circle"] < 0 and abs(importance["a"]) < 0.05
    assert max(importance, key=importance.get) == "red"


@pytest.mark.parametrize("tokenizer", ["word", "clip"])
def test_word_spans_cover_each_words_tokens(tokenizer: str) -> None:
    if tokenizer == "clip" and default_vocab() is None:
        pytest.skip("CLIP's BPE vocabulary (open_clip) is not installed")
    tok = TOKENIZER if tokenizer == "word" else CLIPTokenizer()
    words = ["a", "red", "circle"] if tokenizer == "word" else ["a", "semicircle", "photograph", "of", "Zanzibar"]
    ids = tok([" ".join(words)], pad_to_context=False)[0]
    spans = word_spans(tok, words)
    assert spans[0][0] == 1 and spans[-1][1] == len(ids) - 1  # <start> before, <end> after
    for word, (start, stop) in zip(words, spans, strict=True):
        assert stop > start and tok.decode(ids[start:stop].tolist()).strip() == word.lower()
    if tokenizer == "clip":
        assert any(stop - start > 1 for start, stop in spans)  # a word of several BPE tokens


def test_alignment_maps_average_the_words_that_name_the_object() -> None:
    """ "a red circle": the query's map spans "red circle" (the article names nothing), each word its own."""
    from analysis.explain.pointing import _roles

    assert _roles(TOKENIZER, "a red circle", {"color": "red", "shape": "circle"}, each=True) == {
        "query": (2, 4), "color": (2, 3), "shape": (3, 4)
    }  # fmt: skip
    assert _roles(TOKENIZER, "a circle", {"shape": "circle"}, each=False) == {"query": (2, 3)}


def test_a_caption_of_unknown_words_is_refused() -> None:
    assert check_caption(TOKENIZER, "a zebra") == ["a", "zebra"]  # one known word is enough
    with pytest.raises(UserError, match="unknown to the checkpoint's tokenizer"):
        check_caption(TOKENIZER, "zebra giraffe")
    with pytest.raises(UserError, match="--text is empty"):
        check_caption(TOKENIZER, "  ")


def test_pointing_game_scores_hits_misses_ties_and_heat() -> None:
    box = (1, 2, 3, 7)  # (top, left, bottom, right), exclusive: rows 1-2, columns 2-6, 10 of 64 pixels
    heat = torch.zeros(8, 8)
    heat[2, 6] = 1.0
    assert score_map(heat, box) == (1.0, 1.0, 10 / 64)  # hit; all the heat inside
    assert score_map(heat.T.contiguous(), box)[0] == 0.0  # (6, 2) is outside: rows and columns are not swapped
    heat[3, 6] = heat[2, 7] = 2.0  # just below and just right of the box: the exclusive edges
    hit, share, _ = score_map(heat, box)
    assert hit == 0.0 and share == pytest.approx(1 / 5)  # miss; a fifth of the heat inside
    heat[1, 2] = 2.0
    assert score_map(heat, box)[0] == pytest.approx(1 / 3)  # three tied maxima, one inside: a third of a hit
    assert score_map(torch.ones(8, 8), box)[:2] == (10 / 64, 10 / 64)  # flat: exactly the chance rate
    assert score_map(-torch.ones(8, 8), box)[1] == 10 / 64  # no positive heat: the share is chance
    coarse = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    assert divmod(int(upsample(coarse, 8)[0].argmax()), 8) in {(r, c) for r in range(4) for c in range(4, 8)}


def test_pointing_scenes_name_one_object_truthfully() -> None:
    scenes = PointingScenes(seed=3, length=40, image_size=48, max_objects=3)
    for index in range(len(scenes)):
        item, (scene, target) = scenes[index], scenes.scene(index)
        assert 2 <= len(scene.objects) <= 3 and [t.shape for t in scene.objects].count(target.shape) == 1
        assert item["query"] == lang.article(f"{target.color} {target.shape}") and item["shape_query"] == lang.article(
            target.shape
        )
        top, left, bottom, right = item["box"].tolist()
        alone = render(Scene((target,)), 48).amax(dim=0) > 0
        assert alone.sum() == alone[top:bottom, left:right].sum() > 0  # every painted pixel inside ...
        inside = item["image"][:, top:bottom, left:right]
        colors = {tuple(inside[:, r, c].tolist()) for r in range(bottom - top) for c in range(right - left)}
        assert colors <= {(0, 0, 0), COLORS[target.color]}  # ... and no other object's
        assert torch.equal(item["image"], scenes[index]["image"])  # a pure function of the index
    with pytest.raises(UserError, match="2 or more objects"):
        PointingScenes(max_objects=1)


@pytest.mark.cli
@pytest.mark.parametrize("which", ["clip", "filip"])
def test_explain_command_on_trained_checkpoints(which: str, trained_run, tmp_path: Path) -> None:
    from analysis.__main__ import run as analysis

    run = trained_run(which, *FP32)
    out = tmp_path / "out"
    result = analysis(["explain", "--ckpt", str(run), "--samples", "10", "--examples", "3", "--out", str(out)])
    methods = ["gradcam", "alignment"]
    assert list(result) == [*methods, "metrics"]
    saved = json.loads((out / "explain.json").read_text())
    assert saved["methods"] == methods and saved["world"]["samples"] == 10
    for method in methods:
        query = saved["pointing"][method]["query"]
        assert (
            query["n"] == 10
            and 0 <= query["pointing"] <= 1
            and query["ci95"][0] <= query["pointing"] <= query["ci95"][1]
        )
        assert 0 < query["chance"] < 0.5 and saved["metrics"][f"explain/{method}/pointing"] == query["pointing"]
    assert {"explain/alignment/pointing_word_color", "explain/alignment/pointing_word_shape"} <= set(saved["metrics"])
    assert (out / "figures" / "explain.png").stat().st_size > 5000
    overlays = sorted((out / "explain").glob("pointing-*.png"))
    assert len(overlays) == 3 and all(p.stat().st_size > 5000 for p in overlays)
    # One pair of the user's own.
    Image.fromarray(PointingScenes(length=1)[0]["image"].permute(1, 2, 0).numpy()).save(tmp_path / "scene.png")
    pair = analysis(
        [
            "explain",
            "--ckpt",
            str(run),
            "--image",
            str(tmp_path / "scene.png"),
            "--text",
            "a red circle",
            "--out",
            str(out),
        ]
    )
    assert [w["word"] for w in pair["words"]] == ["a", "red", "circle"] and set(pair["peaks"]) == set(methods)
    assert [w["word"] for w in pair["word_patches"]] == ["a", "red", "circle"]
    assert all(0 <= r < 2 and 0 <= c < 2 for r, c in (w["patch"] for w in pair["word_patches"]))  # ResNet: 2 x 2
    assert Path(pair["figure"]).stat().st_size > 5000 and (out / "explain" / "a-red-circle.json").is_file()
