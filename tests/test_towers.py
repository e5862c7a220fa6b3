"""Towers: output shapes, causal text masking, end-of-text pooling, bad model names."""

from __future__ import annotations

import pytest
import torch

from common.errors import UserError
from variants.towers import TextTower, TowerOutput, VisionTower


@pytest.mark.parametrize(
    ("name", "kwargs", "tokens", "width"),
    [
        ("resnet10t", {}, 4, 512),  # 64 px / stride 32 -> 2x2 feature map
        ("vit_tiny_patch16_224", {"img_size": 64, "patch_size": 8}, 64, 192),  # 8x8 patches, no CLS
    ],
)
def test_vision_tower_global_and_token_shapes(name: str, kwargs: dict, tokens: int, width: int) -> None:
    tower = VisionTower(name, embed_dim=32, model_kwargs=kwargs)
    images = torch.randn(3, 3, 64, 64)
    embedding, none, mask = tower(images)  # one structure for every tower (TowerOutput)
    assert embedding.shape == (3, 32) and none is None and mask is None
    torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(3))
    embedding2, patch_tokens, _ = tower(images, return_tokens=True)
    assert patch_tokens.shape == (3, tokens, width) and tower.token_dim == width
    torch.testing.assert_close(embedding, embedding2)


def test_vit_tokens_exclude_the_class_token() -> None:
    tower = VisionTower("vit_tiny_patch16_224", embed_dim=16, model_kwargs={"img_size": 32, "patch_size": 8}).eval()
    images = torch.randn(2, 3, 32, 32)
    features = tower.backbone.forward_features(images)
    tokens = tower(images, return_tokens=True).tokens
    torch.testing.assert_close(tokens, features[:, 1:])


def test_unknown_timm_model_suggests_close_names() -> None:
    with pytest.raises(UserError, match=r"unknown timm model name 'resnet10x'.*did you mean.*resnet10t"):
        VisionTower("resnet10x")


def _text_tower(**kwargs) -> TextTower:
    return TextTower(vocab_size=50, context_length=12, width=32, depth=2, heads=4, embed_dim=16, **kwargs).eval()


def test_text_tower_shapes_and_mask() -> None:
    tower = _text_tower()
    ids = torch.tensor([[1, 7, 8, 2, 0, 0], [1, 9, 2, 0, 0, 0]])
    embedding, tokens, mask = tower(ids, return_tokens=True)
    assert embedding.shape == (2, 16) and tokens.shape == (2, 6, 32)
    assert mask.tolist() == [[True] * 4 + [False] * 2, [True] * 3 + [False] * 3]
    torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(2))


def test_text_tower_is_causal() -> None:
    """Changing token k leaves the features of every position before k unchanged."""
    tower = _text_tower()
    ids = torch.randint(3, 50, (1, 10))
    changed = ids.clone()
    changed[0, 6] = (ids[0, 6] + 1 - 3) % 47 + 3
    _, before, _ = tower(ids, return_tokens=True)
    _, after, _ = tower(changed, return_tokens=True)
    torch.testing.assert_close(before[:, :6], after[:, :6])
    assert not torch.allclose(before[:, 6:], after[:, 6:])


def test_text_tower_pools_at_the_end_token_whatever_the_padding() -> None:
    """The pooled embedding is the projected final feature at the last real token, so it is
    the same with any amount of padding, and it does not depend on the end id's value."""
    tower = _text_tower()
    short = torch.tensor([[1, 30, 31, 2]])
    padded = torch.tensor([[1, 30, 31, 2, 0, 0, 0, 0, 0]])
    e_short, tokens, _ = tower(short, return_tokens=True)
    e_padded, _, _ = tower(padded)
    torch.testing.assert_close(e_short, e_padded)
    expected = torch.nn.functional.normalize(tower.proj(tokens[:, 3]), dim=-1)
    torch.testing.assert_close(e_short, expected)
    # Pooling is not at argmax(ids): here the word id 31 is the largest.
    wrong = torch.nn.functional.normalize(tower.proj(tokens[:, 2]), dim=-1)
    assert not torch.allclose(e_short, wrong)


def test_text_longer_than_the_context_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="context_length 12"):
        _text_tower()(torch.ones(1, 13, dtype=torch.long))


def test_padding_id_inside_a_text_is_not_padding() -> None:
    """CLIP's BPE pads with 0, which is also the id of "!" inside a word: the end token is the
    last non-padding position, and a 0 before it is an ordinary token."""
    tower = _text_tower()
    ids = torch.tensor([[1, 30, 0, 31, 2, 0, 0]])
    embedding, tokens, mask = tower(ids, return_tokens=True)
    assert mask.tolist() == [[True] * 5 + [False] * 2]
    torch.testing.assert_close(embedding, torch.nn.functional.normalize(tower.proj(tokens[:, 4]), dim=-1))


@pytest.mark.parametrize("pool", ["first", "mean"])
def test_bidirectional_text_tower_sees_the_whole_text_and_ignores_padding(pool: str) -> None:
    tower = _text_tower(causal=False, pool=pool)
    ids = torch.tensor([[1, 30, 31, 32, 2]])
    padded = torch.nn.functional.pad(ids, (0, 4))
    embedding, tokens, mask = tower(ids, return_tokens=True)
    # Padding is masked out of the keys: any amount of it leaves every real position unchanged.
    embedding_padded, tokens_padded, _ = tower(padded, return_tokens=True)
    torch.testing.assert_close(embedding, embedding_padded)
    torch.testing.assert_close(tokens, tokens_padded[:, :5])
    # Bidirectional: a change at the last word reaches the first position.
    changed = ids.clone()
    changed[0, 3] = 40
    _, tokens_changed, _ = tower(changed, return_tokens=True)
    assert not torch.allclose(tokens[:, 0], tokens_changed[:, 0])
    pooled = tokens[:, 0] if pool == "first" else tokens[0, mask[0]].mean(dim=0, keepdim=True)
    torch.testing.assert_close(embedding, torch.nn.functional.normalize(tower.proj(pooled), dim=-1))


def test_text_tower_options_are_checked() -> None:
    with pytest.raises(UserError, match="causal text tower sees only the start"):
        _text_tower(pool="first")
    with pytest.raises(UserError, match="unknown text pooling 'cls'"):
        _text_tower(causal=False, pool="cls")
    with pytest.raises(UserError, match="unknown activation 'swishy'"):
        _text_tower(act_layer="swishy")


def test_timm_weights_come_from_a_local_file(tmp_path) -> None:
    """pretrained=True with timm's pretrained_cfg_overlay file: the backbone holds the file's
    weights (its classifier dropped, num_classes=0); without a local file nothing is fetched."""
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("resnet10t", num_classes=10)
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.add_(torch.randn_like(parameter))
    path = tmp_path / "resnet10t.safetensors"
    save_file(source.state_dict(), str(path))
    tower = VisionTower("resnet10t", pretrained=True, model_kwargs={"pretrained_cfg_overlay": {"file": str(path)}})
    loaded = tower.backbone.state_dict()
    expected = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    with pytest.raises(UserError, match="local disk only and no local file was given"):
        VisionTower("resnet10t", pretrained=True)
    with pytest.raises(UserError, match="missing.safetensors does not exist"):
        VisionTower(
            "resnet10t",
            pretrained=True,
            model_kwargs={"pretrained_cfg_overlay": {"file": str(tmp_path / "missing.safetensors")}},
        )


class BagOfWords(torch.nn.Module):
    """A text tower by contract only (common.records.TextEncoder), no TextTower subclass: the
    mean of word embeddings, projected."""

    def __init__(self, vocab_size: int = 50, context_length: int = 8, embed_dim: int = 16) -> None:
        super().__init__()
        self.vocab_size, self.context_length, self.embed_dim, self.token_dim = vocab_size, context_length, embed_dim, 12
        self.words = torch.nn.Embedding(vocab_size, self.token_dim)
        self.proj = torch.nn.Linear(self.token_dim, embed_dim, bias=False)

    def forward(self, token_ids: torch.Tensor, return_tokens: bool = False) -> TowerOutput:
        tokens, mask = self.words(token_ids), token_ids != 0
        pooled = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return TowerOutput(
            torch.nn.functional.normalize(self.proj(pooled), dim=-1), tokens if return_tokens else None, mask
        )


def test_a_text_tower_is_any_module_with_the_contract_and_one_without_is_named() -> None:
    from variants.module import ContrastiveModule
    from variants.objectives import InfoNCE, TokenwiseInfoNCE

    vision = VisionTower("resnet10t", embed_dim=16)
    module = ContrastiveModule(vision, BagOfWords(), [InfoNCE(), TokenwiseInfoNCE()])  # token-wise: token_dim read
    ids = torch.tensor([[3, 4, 0, 0], [5, 0, 0, 0]])
    record = module.text_record(ids, tokens=True)
    assert record.text.shape == (2, 16) and record.text_tokens.shape == (2, 4, 12)
    assert record.text_mask.tolist() == [[True, True, False, False], [True, False, False, False]]
    broken = BagOfWords()
    del broken.context_length
    with pytest.raises(UserError, match="the text tower BagOfWords lacks context_length of the text-tower contract"):
        ContrastiveModule(VisionTower("resnet10t", embed_dim=16), broken, [InfoNCE()])


def test_the_cli_accepts_a_text_tower_by_its_contract() -> None:
    """jsonargparse matches class_path against the TextEncoder protocol (forward's signature), so a
    text tower need not subclass TextTower; a class without that forward is refused."""
    from jsonargparse import ArgumentParser

    from common.records import TextEncoder

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--tower", type=TextEncoder)
    config = parser.parse_args(
        ["--tower", '{"class_path": "variants.hf_text.HFTextTower", "init_args": {"vocab_size": 40}}']
    )
    assert config.tower.class_path == "variants.hf_text.HFTextTower"
    with pytest.raises(Exception, match="tower"):
        parser.parse_args(
            ["--tower", '{"class_path": "variants.towers.VisionTower", "init_args": {"model_name": "resnet10t"}}']
        )
