"""A BERT text encoder from Hugging Face ``transformers`` as the suite's text tower.

:class:`HFTextTower` implements the text-tower contract (``common.records.TextEncoder``): token ids in,
an L2-normalised embedding, per-position features and the padding mask out. The global feature is
the last hidden state at position 0 ([CLS]) through a linear projection without bias, as
Chinese-CLIP computes it (``x[:, 0, :] @ text_projection``, with ``text.ne(pad)`` as the attention
mask); ``variants.cn_clip`` imports Chinese-CLIP's checkpoints into it.

``transformers`` is imported only when a tower is built, so the suite imports without it (the
``hf`` extra: ``pip install -e '.[hf]'``). Nothing is downloaded: ``pretrained`` is a local
directory written by ``save_pretrained``.

Chinese RoBERTa-wwm-ext models (Chinese-CLIP's text towers, ``hfl/chinese-roberta-wwm-ext``) are
BERT-layout models and load as ``BertModel``; other model types (English RoBERTa, with its
position offset and pad id 1) are refused by name.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import UserError
from common.files import holds_objects
from variants.towers import TowerOutput, check_context

#: The BERT built when neither ``config`` nor ``pretrained`` is given: the size of the suite's
#: default TextTower (width 256, 4 layers, 4 heads, MLP ratio 4), for runs from scratch.
DEFAULT_CONFIG = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024}


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UserError(
            "HFTextTower needs Hugging Face transformers, which is not installed: pip install -e '.[hf]'"
        ) from None
    return transformers


class HFTextTower(nn.Module):
    """A BERT (``transformers.BertModel``, no pooler), [CLS] pooling, a linear projection, L2 norm;
    a text tower by the ``common.records.TextEncoder`` protocol (not a TextTower subclass).

    Args:
        vocab_size: number of token ids (linked from the data's tokenizer by the CLI); must equal
            the model's vocabulary size.
        context_length: maximal sequence length (linked from the data's tokenizer); at most the
            model's ``max_position_embeddings``.
        embed_dim: size of the joint embedding space (must match the vision tower's).
        config: a ``BertConfig`` as a dict (hidden_size, num_hidden_layers, num_attention_heads,
            intermediate_size, max_position_embeddings, type_vocab_size, hidden_act,
            layer_norm_eps, hidden_dropout_prob, ...; BertConfig's defaults fill the rest, so
            dropout is BERT's 0.1 unless set): a BERT with random weights. A missing
            ``vocab_size`` is the tokenizer's.
        pretrained: instead of ``config``, a local directory written by ``save_pretrained``
            (``config.json`` and the weights), read with ``local_files_only``. Neither given: a
            small BERT (:data:`DEFAULT_CONFIG`). ``False`` counts as not given (the analysis
            rebuilds towers with ``pretrained: false`` and takes the weights from the checkpoint).
        pad_id: id of the padding token; the attention mask is ``token_ids != pad_id`` (BERT
            vocabularies pad with [PAD] = 0, which never occurs inside a text).
        grad_checkpointing: recompute each BERT layer in the backward instead of keeping its
            activations (transformers' gradient checkpointing, non-reentrant; training only).

    The projection (``proj``, [embed_dim, hidden]) starts as Chinese-CLIP's ``text_projection``:
    normal with std hidden**-0.5. Token outputs are the last hidden state [B, L, hidden] at every
    position (padding included; the mask marks the real tokens).
    """

    def __init__(
        self,
        vocab_size: int,
        context_length: int = 52,
        embed_dim: int = 128,
        config: dict | None = None,
        pretrained: str | bool | None = None,
        pad_id: int = 0,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        transformers = _transformers()
        if pretrained is False:
            pretrained = None
        if config is not None and pretrained is not None:
            raise UserError(
                "HFTextTower takes one of config (a BertConfig dict, random weights) and pretrained "
                "(a local save_pretrained directory), not both"
            )
        if pretrained is not None:
            bert = _pretrained_config(transformers, str(pretrained))
            source = f"the pretrained model {pretrained}"
        else:
            settings = dict(DEFAULT_CONFIG if config is None else config)
            settings.setdefault("vocab_size", vocab_size)
            try:
                bert = transformers.BertConfig(**settings)
            except (TypeError, ValueError) as error:
                raise UserError(f"HFTextTower config is not a valid BertConfig: {error}".splitlines()[0]) from None
            source = "the text tower's config"
        # Checked before any weight is built or read.
        if bert.vocab_size != vocab_size:
            raise UserError(
                f"{source} has a vocabulary of {bert.vocab_size} tokens but the data's tokenizer has {vocab_size}: "
                "tokenize with the model's vocabulary (e.g. data.init_args.vocab: cn_clip for Chinese-CLIP, or the "
                "model's vocab.txt), or leave vocab_size out of the config"
            )
        if context_length > bert.max_position_embeddings:
            raise UserError(
                f"context_length {context_length} exceeds {source}'s {bert.max_position_embeddings} positions "
                "(max_position_embeddings): tokenize with a shorter context length"
            )
        self.model: Any  # a transformers.BertModel (transformers is imported lazily, so untyped here)
        if pretrained is not None:
            self.model = _from_pretrained(transformers, str(pretrained))
        else:
            try:
                self.model = transformers.BertModel(bert, add_pooling_layer=False)
            except (TypeError, ValueError) as error:  # e.g. a width the heads do not divide
                raise UserError(f"HFTextTower config is not a valid BertConfig: {error}".splitlines()[0]) from None
        self.vocab_size, self.context_length, self.pad_id = vocab_size, context_length, pad_id
        self.embed_dim, self.token_dim = embed_dim, int(bert.hidden_size)
        self.proj = nn.Linear(self.token_dim, embed_dim, bias=False)
        nn.init.normal_(self.proj.weight, std=self.token_dim**-0.5)
        self.grad_checkpointing = grad_checkpointing
        if grad_checkpointing:
            kwargs = {"use_reentrant": False}
            if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5 (the old name warns)
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def no_weight_decay(self) -> set[str]:
        """The position and token-type embeddings, like a timm ViT's ``pos_embed`` in the vision
        tower; biases and LayerNorm gains are 1-d and never decayed. The word embeddings are
        decayed, like the TextTower's token embedding."""
        return {f"model.embeddings.{name}.weight" for name in ("position_embeddings", "token_type_embeddings")}

    def forward(self, token_ids: torch.Tensor, return_tokens: bool = False) -> TowerOutput:
        """token_ids [B, L] -> (embedding [B, D] normalised, tokens [B, L, hidden] or None, mask [B, L])."""
        check_context(token_ids, self.context_length)
        mask = token_ids != self.pad_id
        hidden = self.model(input_ids=token_ids, attention_mask=mask.long()).last_hidden_state
        embedding = F.normalize(self.proj(hidden[:, 0]), dim=-1)
        return TowerOutput(embedding, hidden if return_tokens else None, mask)


def _pretrained_config(transformers, path: str):
    """The BertConfig of a local save_pretrained directory, or a one-line UserError."""
    directory = Path(path)
    if not (directory / "config.json").is_file():
        where = "does not exist" if not directory.exists() else "has no config.json"
        raise UserError(
            f"HFTextTower pretrained directory {path} {where}: give a local directory written by save_pretrained "
            "(nothing is downloaded)"
        )
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read the model config in {path}: {error}".splitlines()[0]) from None
    if config.model_type != "bert":
        raise UserError(
            f"{path} holds a '{config.model_type}' model; HFTextTower loads BERT-layout models only "
            "(BERT, Chinese RoBERTa-wwm-ext)"
        )
    return config


def not_tensors(path: str | Path) -> str:
    """Why a weights file holding pickled objects (code, classes: anything but tensors) is refused."""
    return (
        f"{path} holds objects other than tensors (pickled Python), so it will not be loaded: weights are read "
        "with torch.load(weights_only=True), which runs no code from a file; save the weights alone "
        "(save_pretrained writes model.safetensors) from a copy of the model you trust"
    )


# The lines torch.load(weights_only=True) wraps its unpickler's reason in.
_TORCH_PREAMBLE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _from_pretrained(transformers, path: str) -> nn.Module:
    from safetensors import SafetensorError

    try:
        model = transformers.BertModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load the BERT weights in {path}: {error}".splitlines()[0]) from None
    except SafetensorError as error:  # a damaged or cut model.safetensors (transformers reads it first)
        raise UserError(
            f"{Path(path) / 'model.safetensors'} is damaged ({error}): copy the file again, or save the model "
            "again with save_pretrained"
        ) from None
    except (pickle.UnpicklingError, RuntimeError) as error:  # pytorch_model.bin, read with weights_only=True
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        weights = Path(path) / "pytorch_model.bin"
        if holds_objects(error):  # pickled classes or code: never run
            raise UserError(not_tensors(weights)) from None
        if isinstance(error, RuntimeError) and not any("PytorchStreamReader" in line for line in lines):
            raise
        # torch's weights-only preamble (re-run with weights_only=False) says nothing about this file
        reason = next((line for line in lines if not line.startswith(_TORCH_PREAMBLE)), lines[0])
        raise UserError(
            f"{weights} is damaged or not a torch file ({reason}): copy the file again, or save the model again "
            "with save_pretrained"
        ) from None
    # float32 whatever the file's dtype (transformers 5 keeps a half-precision file's), and in
    # training mode like every freshly built tower (from_pretrained returns it in eval mode).
    return model.float().train()
