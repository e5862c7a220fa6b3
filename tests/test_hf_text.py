"""HFTextTower: a transformers BERT as the text tower, with TextTower's call contract."""

from __future__ import annotations

import pytest
import torch

from common.errors import UserError
from variants.module import ContrastiveModule, _weight_decay_groups
from variants.objectives import InfoNCE, MaskedLanguageModel, TokenwiseInfoNCE
from variants.towers import VisionTower

pytest.importorskip("transformers")

from variants.hf_text import HFTextTower

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
IDS = torch.tensor([[2, 5, 6, 7, 3, 0, 0, 0], [2, 9, 3, 0, 0, 0, 0, 0], [2, 4, 4, 4, 4, 4, 4, 3]])


def tiny_tower(**kwargs) -> HFTextTower:
    return HFTextTower(**({"vocab_size": 40, "context_length": 8, "embed_dim": 16, "config": TINY} | kwargs))


def test_shapes_normalisation_and_mask() -> None:
    tower = tiny_tower().eval()
    assert (tower.embed_dim, tower.token_dim, tower.vocab_size, tower.context_length, tower.pad_id) == (
        16,
        32,
        40,
        8,
        0,
    )
    embedding, tokens, mask = tower(IDS, return_tokens=True)
    assert embedding.shape == (3, 16) and tokens.shape == (3, 8, 32) and mask.dtype == torch.bool
    assert torch.allclose(embedding.norm(dim=-1), torch.ones(3))
    assert torch.equal(mask, IDS != 0)
    assert tower(IDS)[1] is None
    # The global embedding is the projected [CLS] state of the token outputs.
    assert torch.allclose(embedding, torch.nn.functional.normalize(tower.proj(tokens[:, 0]), dim=-1))


def test_extra_padding_does_not_change_the_embedding() -> None:
    tower = tiny_tower(context_length=12).eval()
    padded = torch.nn.functional.pad(IDS, (0, 4), value=0)
    with torch.no_grad():
        short, long = tower(IDS, return_tokens=True), tower(padded, return_tokens=True)
    assert torch.allclose(short[0], long[0], atol=1e-6)
    assert torch.allclose(short[1][short[2]], long[1][:, :8][short[2]], atol=1e-5)  # real tokens unchanged


def test_a_text_longer_than_the_context_is_refused() -> None:
    with pytest.raises(UserError, match="text of 9 tokens exceeds the text tower's context_length 8"):
        tiny_tower()(torch.ones(1, 9, dtype=torch.long))


def test_vocabulary_mismatch_is_one_line_naming_both_sizes_and_the_fix() -> None:
    with pytest.raises(UserError) as error:
        tiny_tower(config=TINY | {"vocab_size": 21128})
    message = str(error.value)
    assert "\n" not in message and "21128" in message and "40" in message and "data.init_args.vocab" in message
    assert tiny_tower(config=TINY).model.config.vocab_size == 40  # missing: the tokenizer's


def test_context_beyond_the_position_embeddings_and_bad_configs_are_refused() -> None:
    with pytest.raises(UserError, match="context_length 77 exceeds .* 64 positions"):
        tiny_tower(context_length=77, config=TINY | {"max_position_embeddings": 64})
    with pytest.raises(UserError, match="not a valid BertConfig"):
        tiny_tower(config=TINY | {"hidden_size": 30, "num_attention_heads": 4})
    with pytest.raises(UserError, match="not both"):
        tiny_tower(pretrained="/somewhere")


def test_missing_pretrained_directory_is_one_line(tmp_path) -> None:
    with pytest.raises(UserError) as error:
        HFTextTower(40, 8, pretrained=str(tmp_path / "nowhere"))
    assert "\n" not in str(error.value) and "nowhere does not exist" in str(error.value)
    with pytest.raises(UserError, match="has no config.json"):
        HFTextTower(40, 8, pretrained=str(tmp_path))


def test_from_pretrained_round_trip(tmp_path) -> None:
    source = tiny_tower().eval()
    source.model.save_pretrained(tmp_path / "bert")
    loaded = HFTextTower(40, 8, embed_dim=16, pretrained=str(tmp_path / "bert"))
    assert loaded.training and loaded.model.training and next(loaded.parameters()).dtype == torch.float32
    loaded.proj.load_state_dict(source.proj.state_dict())
    with torch.no_grad():
        assert torch.allclose(source(IDS)[0], loaded.eval()(IDS)[0], atol=1e-6)
    with pytest.raises(UserError, match="vocabulary of 40 tokens but the data's tokenizer has 50"):
        HFTextTower(50, 8, pretrained=str(tmp_path / "bert"))
    # A half-precision save loads in float32.
    source.model.half().save_pretrained(tmp_path / "half")
    assert next(HFTextTower(40, 8, pretrained=str(tmp_path / "half")).parameters()).dtype == torch.float32


class Payload:
    """What a malicious pytorch_model.bin pickles: loading it would call os.system."""

    def __reduce__(self):
        import os

        return (os.system, ("echo this must never run",))


def test_damaged_and_unsafe_weight_files_are_one_line(tmp_path) -> None:
    """A damaged model.safetensors, a pytorch_model.bin that pickles code (refused by weights_only=True,
    never run) and one that is no torch file at all: each one line naming the file, none suggesting
    weights_only=False."""
    tiny_tower().model.save_pretrained(tmp_path / "damaged")
    weights = tmp_path / "damaged" / "model.safetensors"
    weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:64])
    for name, content in (("pickled", None), ("garbage", b"not a torch file")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text((tmp_path / "damaged" / "config.json").read_text())
        if content is None:
            torch.save({"weight": Payload()}, tmp_path / name / "pytorch_model.bin")
        else:
            (tmp_path / name / "pytorch_model.bin").write_bytes(content)
    expected = {
        "damaged": f"{weights} is damaged (Error while deserializing header: header too large): copy the file again",
        "pickled": f"{tmp_path / 'pickled' / 'pytorch_model.bin'} holds objects other than tensors (pickled Python), "
        "so it will not be loaded",
        "garbage": f"{tmp_path / 'garbage' / 'pytorch_model.bin'} is damaged or not a torch file (Unsupported operand",
    }
    for name, message in expected.items():
        with pytest.raises(UserError) as error:
            HFTextTower(40, 8, pretrained=str(tmp_path / name))
        assert str(error.value).startswith(message) and "\n" not in str(error.value)
        assert "weights_only=False" not in str(error.value) and "weights_only` set to `False" not in str(error.value)


def test_other_model_types_are_refused_by_name(tmp_path) -> None:
    from transformers import RobertaConfig

    RobertaConfig(vocab_size=40, **TINY).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="holds a 'roberta' model; HFTextTower loads BERT-layout models only"):
        HFTextTower(40, 8, pretrained=str(tmp_path))


def test_default_is_a_small_bert() -> None:
    tower = HFTextTower(100, 16)
    assert tower.token_dim == 256 and tower.model.config.num_hidden_layers == 4


@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradient_reaches_the_encoder_and_the_projection(checkpointing: bool) -> None:
    tower = tiny_tower(grad_checkpointing=checkpointing)
    embedding, tokens, _ = tower(IDS, return_tokens=True)
    (embedding.sum() + tokens.sum()).backward()
    assert tower.proj.weight.grad.abs().sum() > 0
    assert tower.model.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert tower.model.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
        tower = tiny_tower(grad_checkpointing=checkpointing, config=TINY | no_dropout)
        on = getattr(tower.model, "is_activation_checkpointing", None)  # transformers 5's name
        assert (on if on is not None else tower.model.is_gradient_checkpointing) == checkpointing
        tower(IDS)[0].pow(2).sum().backward()
        grads.append(tower.model.encoder.layer[0].attention.self.query.weight.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_weight_decay_skips_position_embeddings_biases_and_norms() -> None:
    module = ContrastiveModule(VisionTower("resnet10t", embed_dim=16), tiny_tower(), [InfoNCE()])
    names = {id(p): n for n, p in module.named_parameters()}
    decayed = {names[id(p)] for p in _weight_decay_groups(module)[0]}
    assert "text_tower.model.embeddings.word_embeddings.weight" in decayed
    assert "text_tower.model.encoder.layer.0.attention.self.query.weight" in decayed
    assert "text_tower.proj.weight" in decayed
    assert "text_tower.model.embeddings.position_embeddings.weight" not in decayed
    assert "text_tower.model.embeddings.token_type_embeddings.weight" not in decayed
    assert not any(n.startswith("text_tower.") and ("LayerNorm" in n or n.endswith(".bias")) for n in decayed)


def test_token_terms_attach_to_it() -> None:
    # FILIP's token-wise term reads token_dim; the MLM head reads token_dim and vocab_size.
    module = ContrastiveModule(
        VisionTower("resnet10t", embed_dim=16), tiny_tower(), [TokenwiseInfoNCE(token_dim=8), MaskedLanguageModel()]
    )
    assert module.terms["maskedlanguagemodel"].head.weight.shape == (40, 32)


def test_one_training_step_inside_a_contrastive_module(tmp_path) -> None:
    from helpers.training import quiet_trainer, tiny_data

    datamodule = tiny_data()
    text = HFTextTower(datamodule.vocab_size, datamodule.context_length, embed_dim=16, config=TINY)
    module = ContrastiveModule(VisionTower("resnet10t", embed_dim=16), text, [InfoNCE()], warmup_steps=1)
    before = {k: v.clone() for k, v in module.text_tower.state_dict().items()}
    quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(module, datamodule)
    after = module.text_tower.state_dict()
    assert not torch.equal(before["proj.weight"], after["proj.weight"])
    assert not torch.equal(
        before["model.encoder.layer.1.output.dense.weight"], after["model.encoder.layer.1.output.dense.weight"]
    )
    assert all(torch.isfinite(v).all() for v in after.values())
