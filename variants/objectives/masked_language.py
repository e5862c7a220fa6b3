"""DeCLIP's text self-supervision, TSS: masked language modelling on the text tower (Li et al.
2022, arXiv 2110.05208; BERT's MLM, Devlin et al. 2019, section 3.1; official code
Sense-GVT/DeCLIP @ 5d99a85, prototype/model/utils/text_utils/mask_tokens.py,
prototype/model/text_encoder/text_transformer.py L151-197, prototype/model/declip.py L169-171
and L330-334).

The data masks each caption (``datamodules.augment.TokenMasking``: 15% of the real tokens, of
those 80% -> <mask>, 10% -> a random id, 10% unchanged) and hands the model the masked ids as
the caption and the original ids as ``mlm_labels``. The text tower runs the masked caption with
its usual CAUSAL attention (the official code has one causal text transformer and runs the masked
copy through it, text_transformer.py L31-37, L136-142, L185-194: a masked position's prediction
sees only the tokens before it and itself), and the masked caption is ALSO the text that the
contrastive terms see (declip.py L214-216: there is no forward of the unmasked caption). A linear
head over every position's final-LayerNorm output predicts the original ids:

    L_TSS = 1/M sum_{masked positions j} CE(W x_j + b, y_j)

over the M masked tokens of the batch (``F.cross_entropy`` over the masked positions,
declip.py L330-334), weight 0.2 in DeCLIP's total loss; the head is Linear(width, vocab), not tied
to the token embedding (declip.py L169-171). Deviation, for the distributed rule: the official
code averages each GPU's mean (GPUs holding fewer masked tokens weigh more); here every masked
token of the global batch counts once (the local sum is divided by the global count).
"""

from __future__ import annotations

import torch
from torch import nn

from common.errors import UserError
from variants.distributed import global_sum, world
from variants.losses import masked_token_loss
from variants.objectives.base import Term, at_least_float32, attached, full_precision, present
from variants.towers import Encoded

IGNORE = -100  # label of the positions that were not masked (PyTorch's cross_entropy default)


class MaskedLanguageModel(Term):
    """Masked-token prediction over the text tower's token outputs (needs the data's
    ``text_masking``).

    Args:
        weight: weight in the total loss (0.2 in DeCLIP).
    """

    needs = frozenset({"text_tokens", "mlm_labels"})
    needs_global = False

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__(weight)
        self.head: nn.Linear | None = None

    def attach(self, vision_tower: nn.Module, text_tower: nn.Module) -> None:
        width, vocab = getattr(text_tower, "token_dim", None), getattr(text_tower, "vocab_size", None)
        if not width or not vocab:
            missing = "token outputs (token_dim)" if not width else "a vocabulary size (vocab_size)"
            raise UserError(
                f"maskedlanguagemodel predicts masked tokens from the text tower's token outputs, but "
                f"{type(text_tower).__name__} has no {missing}; use variants.towers.TextTower"
            )
        self.head = nn.Linear(int(width), int(vocab))

    def forward(self, encoded: Encoded) -> dict[str, torch.Tensor]:
        labels, tokens = present(encoded, "mlm_labels"), present(encoded, "text_tokens")
        head = attached(self, self.head)
        chosen = labels != IGNORE
        # Local sum / global count: DDP's average over ranks is then the global-batch mean.
        count = chosen.sum()
        total = global_sum(count)
        _, size = world()
        with full_precision(tokens.device):
            (selected,) = at_least_float32(tokens[chosen])
            logits = nn.functional.linear(selected, *at_least_float32(head.weight, head.bias))
            loss = masked_token_loss(logits, labels[chosen], total) * size
            with torch.no_grad():
                hits = (logits.argmax(-1) == labels[chosen]).sum()
                acc = global_sum(hits.float()) / total.clamp_min(1)
        return {"loss": loss, "acc": acc, "masked_tokens": total.float()}
