"""Augmented views for self-supervised terms: two views of an image (SLIP's SimCLR branch,
DeCLIP's image views), a second view of a caption (DeCLIP's EDA text view), and the token masking
of DeCLIP's masked language modelling.

Every view is a pure function of (input, seed). Training datasets derive the seeds from the data
seed, the sample index and the epoch (:func:`epoch_seed`), so a sample's views differ from epoch to
epoch, are the same in every worker and on resume, and at epoch 0 are those of earlier versions.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Mapping, Sequence

import torch
from torchvision.transforms import v2

from common.errors import UserError
from datamodules.tokenizer.base import TextTokenizer
from datamodules.transforms import check_crop_scale


class SSLViews:
    """SLIP's SimCLR augmentation (Mu et al. 2021, appendix; SimCLR, Chen et al. 2020):
    RandomResizedCrop(scale 0.08-1), ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8, grayscale
    p=0.2, Gaussian blur (sigma 0.1-2) p=0.5, horizontal flip p=0.5.

    Every part is configurable because some fight the captions: on ShapesWorld color jitter
    and grayscale change the color words' truth and a flip swaps "left of" and "right of".
    Each is checked when built (a value torchvision would only refuse at the first sample, in a
    worker): ``crop_scale`` 0 < low <= high <= 1; ``color_jitter`` brightness, contrast and
    saturation >= 0, hue in [0, 0.5]; the probabilities in [0, 1].

    Views are a pure function of (image, seed), so they are the same in every worker.
    """

    def __init__(
        self,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
        color_jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p: float = 0.5,
        flip_p: float = 0.5,
    ) -> None:
        self.crop_scale = check_crop_scale(crop_scale, "views.crop_scale")
        self.color_jitter = _check_jitter(color_jitter)
        for name, p in (("color_jitter_p", color_jitter_p), ("grayscale_p", grayscale_p), ("blur_p", blur_p),
                        ("flip_p", flip_p)):  # fmt: skip
            if not _number(p) or not 0 <= p <= 1:
                raise UserError(f"views.{name} must be a probability in [0, 1], got {p!r}")
        self.color_jitter_p, self.grayscale_p, self.blur_p, self.flip_p = color_jitter_p, grayscale_p, blur_p, flip_p
        self._pipelines: dict[int, v2.Compose] = {}

    def _pipeline(self, size: int) -> v2.Compose:
        if size not in self._pipelines:
            kernel = max(3, int(0.1 * size) // 2 * 2 + 1)  # ~10% of the side, odd (SimCLR)
            self._pipelines[size] = v2.Compose([
                v2.RandomResizedCrop(size, scale=self.crop_scale, antialias=True),
                v2.RandomApply([v2.ColorJitter(*self.color_jitter)], p=self.color_jitter_p),
                v2.RandomGrayscale(p=self.grayscale_p),
                v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=self.blur_p),
                v2.RandomHorizontalFlip(p=self.flip_p),
            ])  # fmt: skip
        return self._pipelines[size]

    def __call__(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        """uint8 [3, H, W] -> two views, uint8 [2, 3, H, W]."""
        pipeline = self._pipeline(image.shape[-1])
        with torch.random.fork_rng(devices=[]):  # the CPU generator only; CUDA's is untouched
            torch.default_generator.manual_seed(seed)
            return torch.stack([pipeline(image), pipeline(image)])


JITTER = ("brightness", "contrast", "saturation", "hue")


def _check_jitter(values: object) -> tuple[float, float, float, float]:
    """ColorJitter's strengths: brightness, contrast, saturation >= 0 (a factor drawn from
    [max(0, 1 - s), 1 + s]) and hue in [0, 0.5] (a shift of at most half the colour wheel)."""
    jitter = tuple(values) if isinstance(values, (list, tuple)) else ()
    if len(jitter) != 4 or not all(_number(v) for v in jitter):
        raise UserError(
            f"views.color_jitter must be four numbers [brightness, contrast, saturation, hue], got {values!r}"
        )
    for name, value in zip(JITTER, jitter, strict=True):
        high = 0.5 if name == "hue" else math.inf
        if not 0 <= value <= high:
            allowed = "in [0, 0.5]" if name == "hue" else ">= 0"
            raise UserError(
                f"views.color_jitter {name} (item {JITTER.index(name) + 1}) must be {allowed}, got {value!r}"
            )
    return tuple(float(v) for v in jitter)  # type: ignore[return-value]  # four, checked above


def epoch_seed(base: int, epoch: int, what: str) -> int:
    """The seed of one augmentation (``what``: "views", "text_view", "mask") of a sample in an epoch,
    from the sample's ``base`` seed (a pure function of the data seed and the index).

    Epoch 0's image views use ``base`` itself: the seed ShapesWorld has always drawn, so runs made
    before views varied by epoch (SLIP) stay reproducible. Everything else hashes (base, epoch,
    what): string seeds go through SHA-512 in ``random.Random``, the same in every process.
    """
    if epoch == 0 and what == "views":
        return base
    return random.Random(f"{base}:{epoch}:{what}").getrandbits(63)


OPS = ("synonym", "swap", "delete", "insert")


class TextViews:
    """A second view of a caption by one EDA operation (Wei and Zou 2019, arXiv 1901.11196), as
    DeCLIP makes its text view (Sense-GVT/DeCLIP @ 5d99a85, prototype/model/declip.py L203-210:
    ``choice([synonym_replacement, random_swap, random_deletion])`` of ``textaugment.EDA()`` with its
    defaults n=1, p=0.1).

    One operation is drawn per caption with probability proportional to its weight:

    - ``synonym``: replace ``words`` distinct words that have an entry in ``synonyms`` by one of
      their synonyms, every occurrence of each (as EDA does). The table alone says what may be
      replaced: no thesaurus (WordNet) and no stopword list are used.
    - ``swap``: ``words`` times, swap two words at distinct positions.
    - ``delete``: delete each word with probability ``delete_p``; a one-word caption is kept, and
      when every word would go one random word stays (EDA).
    - ``insert``: ``words`` times, insert at a random position a synonym of a random word of the
      caption that has one, or, without any, a copy of a random word (EDA's 4th operation; DeCLIP
      does not use it, hence weight 0 by default).

    Words are the caption split on whitespace (rejoined with single spaces); ``synonyms`` and
    ``protected`` match them lowercased. Deletion, swap and insertion never touch a ``protected``
    word (nor copy one), so a caption whose truth depends on them (ShapesWorld's places) keeps it.
    When the drawn operation has nothing to act on (no word with a synonym, fewer than two
    unprotected words to swap, one word to delete from, none to insert) the caption is returned
    unchanged, as EDA returns it.

    Args:
        synonym, swap, delete, insert: relative weights of the four operations (finite, >= 0, not
            all 0). DeCLIP: 1, 1, 1, 0.
        words: how many words synonym replacement, swap and insertion act on (EDA's n; DeCLIP 1).
        delete_p: probability of deleting each word (EDA's p; DeCLIP 0.1), in [0, 1).
        synonyms: word -> its synonyms. None: the datamodule's own table where it has one
            (ShapesWorld's), else synonym replacement is an error unless its weight is 0.
        protected: words deletion, swap and insertion leave alone. None: the datamodule's (ShapesWorld:
            place words, shape nouns, negations), else none.
    """

    def __init__(
        self,
        synonym: float = 1.0,
        swap: float = 1.0,
        delete: float = 1.0,
        insert: float = 0.0,
        words: int = 1,
        delete_p: float = 0.1,
        synonyms: Mapping[str, Sequence[str]] | None = None,
        protected: Sequence[str] | None = None,
    ) -> None:
        self.weights = {"synonym": synonym, "swap": swap, "delete": delete, "insert": insert}
        for name, weight in self.weights.items():
            if not _number(weight) or not math.isfinite(weight) or weight < 0:
                raise UserError(f"text_views.{name} must be a finite weight >= 0, got {weight!r}")
        if not any(self.weights.values()):
            raise UserError(
                "text_views: the weights synonym, swap, delete and insert are all 0; give one a weight > 0 "
                "(or set text_views: null for no text view)"
            )
        if not _number(words) or isinstance(words, float) or words < 1:
            raise UserError(f"text_views.words must be an integer >= 1, got {words!r}")
        if not _number(delete_p) or not 0 <= delete_p < 1:
            raise UserError(f"text_views.delete_p must be in [0, 1), got {delete_p!r}")
        self.words, self.delete_p = int(words), float(delete_p)
        self.synonyms = None if synonyms is None else _table(synonyms)
        self.protected = None if protected is None else frozenset(w.lower() for w in protected)
        self._ops = [op for op in OPS if self.weights[op] > 0]

    def with_defaults(self, synonyms: Mapping[str, Sequence[str]] | None, protected: Sequence[str] | None) -> TextViews:
        """A copy using the dataset's synonym table and protected words where this has none."""
        views = copy.copy(self)
        if views.synonyms is None:
            views.synonyms = _table(synonyms or {})
        if views.protected is None:
            views.protected = frozenset(w.lower() for w in protected or ())
        return views

    def require_synonyms(self, data: str) -> None:
        """One-line UserError when synonym replacement is on without a table (``data`` has none)."""
        if self.weights["synonym"] > 0 and not self.synonyms:
            raise UserError(
                f"data.init_args.text_views: synonym replacement needs a synonym table and {data} has none "
                "(no external thesaurus is used): set synonym: 0, or give synonyms: {word: [synonym, ...]}"
            )

    def __call__(self, caption: str, seed: int) -> str:
        """The caption's text view; a pure function of (caption, seed)."""
        rng = random.Random(seed)
        op = rng.choices(self._ops, weights=[self.weights[op] for op in self._ops])[0]
        words = caption.split()
        changed = getattr(self, f"_{op}")(words, rng) if words else None
        return caption if changed is None else " ".join(changed)

    def _free(self, word: str) -> bool:
        return self.protected is None or word.lower() not in self.protected

    def _synonyms_of(self, word: str) -> Sequence[str]:
        return (self.synonyms or {}).get(word.lower(), ())

    def _synonym(self, words: list[str], rng: random.Random) -> list[str] | None:
        candidates = sorted({w for w in words if self._synonyms_of(w)})
        if not candidates:
            return None
        rng.shuffle(candidates)
        for word in candidates[: self.words]:
            synonym = rng.choice(self._synonyms_of(word))
            words = [synonym if w == word else w for w in words]
        return words

    def _swap(self, words: list[str], rng: random.Random) -> list[str] | None:
        free = [i for i, w in enumerate(words) if self._free(w)]
        if len(free) < 2:
            return None
        for _ in range(self.words):
            i, j = rng.sample(free, 2)
            words[i], words[j] = words[j], words[i]
        return words

    def _delete(self, words: list[str], rng: random.Random) -> list[str] | None:
        if len(words) == 1:
            return None
        kept = [w for w in words if not self._free(w) or rng.random() >= self.delete_p]
        return kept or [rng.choice(words)]

    def _insert(self, words: list[str], rng: random.Random) -> list[str] | None:
        sources = [w for w in words if self._free(w)]
        if not sources:
            return None
        with_synonyms = [w for w in sources if self._synonyms_of(w)]
        for _ in range(self.words):
            new = rng.choice(self._synonyms_of(rng.choice(with_synonyms))) if with_synonyms else rng.choice(sources)
            words.insert(rng.randint(0, len(words)), new)
        return words

    def __repr__(self) -> str:
        weights = ", ".join(f"{k}={v}" for k, v in self.weights.items())
        return f"TextViews({weights}, words={self.words}, delete_p={self.delete_p})"


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _table(synonyms: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Lowercased keys; a word is not its own synonym; entries without a synonym are dropped."""
    if not isinstance(synonyms, Mapping) or not all(isinstance(v, (list, tuple)) for v in synonyms.values()):
        raise UserError("text_views.synonyms must map each word to a list of its synonyms")
    table = {str(k).lower(): [str(s) for s in v if str(s).lower() != str(k).lower()] for k, v in synonyms.items()}
    return {k: v for k, v in table.items() if v}


IGNORE = -100  # the label of every position the loss skips (``F.cross_entropy``'s ignore_index)


class TokenMasking:
    """BERT-style token masking as DeCLIP does it (Sense-GVT/DeCLIP @ 5d99a85,
    prototype/model/utils/text_utils/mask_tokens.py L5-29; HF ``DataCollatorForLanguageModeling``).

    Each eligible token of a caption is chosen with probability ``probability``; of the chosen,
    ``mask_fraction`` become the tokenizer's mask id, ``random_fraction`` a uniformly random id of
    the WHOLE vocabulary (both DeCLIP and HF draw over every id, specials included), the rest stay.
    Labels hold the original id at the chosen positions and -100 elsewhere. Eligible: every
    position up to the end token whose id is not special (start, end, unk, mask, and padding where
    padding is a special token), so padding positions are never chosen (DeCLIP masks the caption
    before padding it).

    The draws of a row come from a ``torch.Generator`` seeded by that row's seed and cover only the
    caption's own tokens, so a caption's mask depends on its seed alone, not on the batch it is in
    (the padded width) nor on the worker that built it.

    Args:
        probability: chance that an eligible token is chosen (DeCLIP 0.15), in (0, 1].
        mask_fraction: share of the chosen replaced by the mask id (0.8), in [0, 1].
        random_fraction: share of the chosen replaced by a random id (0.1), in [0, 1 - mask_fraction].
    """

    def __init__(self, probability: float = 0.15, mask_fraction: float = 0.8, random_fraction: float = 0.1) -> None:
        for name, value in (("probability", probability), ("mask_fraction", mask_fraction),
                            ("random_fraction", random_fraction)):  # fmt: skip
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
                raise UserError(f"text_masking.{name} must be in [0, 1], got {value!r}")
        if probability == 0:
            raise UserError("text_masking.probability must be > 0 (0 masks nothing; set text_masking: null)")
        if mask_fraction + random_fraction > 1 + 1e-9:
            raise UserError(
                f"text_masking: mask_fraction + random_fraction must be <= 1 (the rest stays unchanged), "
                f"got {mask_fraction} + {random_fraction}"
            )
        self.probability, self.mask_fraction, self.random_fraction = probability, mask_fraction, random_fraction

    def __call__(
        self, ids: torch.Tensor, seeds: Sequence[int], tokenizer: TextTokenizer
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [B, L] (rows ``<start> ... <end>`` then padding) and one seed per row ->
        (masked ids [B, L], labels [B, L])."""
        if tokenizer.mask_id is None:
            raise UserError(f"{type(tokenizer).__name__} has no mask token: call its add_mask_token() first")
        positions = torch.arange(ids.shape[1])
        # The caption's length: up to its end token, the last position that is not padding.
        lengths = torch.where(ids != tokenizer.pad_id, positions, -1).amax(dim=1) + 1
        # Each row's draws cover its own tokens only (1.0 past them: never chosen); the rest is
        # one vectorised pass over the batch.
        choose, split = torch.ones(ids.shape), torch.ones(ids.shape)
        random_ids = torch.zeros_like(ids)
        for row, (seed, length) in enumerate(zip(seeds, lengths.tolist(), strict=True)):
            generator = torch.Generator().manual_seed(int(seed))
            choose[row, :length] = torch.rand(length, generator=generator)
            split[row, :length] = torch.rand(length, generator=generator)
            random_ids[row, :length] = torch.randint(tokenizer.vocab_size, (length,), generator=generator)
        special = torch.isin(ids, torch.tensor(sorted(tokenizer.special_ids)))
        chosen = (choose < self.probability) & ~special
        to_mask = chosen & (split < self.mask_fraction)
        to_random = chosen & ~to_mask & (split < self.mask_fraction + self.random_fraction)
        labels = torch.where(chosen, ids, IGNORE)
        masked = torch.where(to_mask, tokenizer.mask_id, torch.where(to_random, random_ids, ids))
        return masked, labels

    def __repr__(self) -> str:
        return (
            f"TokenMasking(probability={self.probability}, mask_fraction={self.mask_fraction}, "
            f"random_fraction={self.random_fraction})"
        )
