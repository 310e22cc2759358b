"""Self-generated targets: masked-LM (token, whole-word, span) and next-token collators. Pure tensor code.

No I/O and no tokenizer calls: a collator takes a batch of token ids (and word starts, for whole-word / span
masking) and returns ``input_ids``, ``labels`` (-100 where there is no target) and, only when some positions are
padding, ``attention_mask``. Randomness comes from the collator's own seeded ``torch.Generator``, so evaluation can
use a fixed mask and resumed training draws the same masks as the uninterrupted run.

Shapes: B = batch size, L = sequence length. Memory is O(B x L) for every mode (whole-word masking included).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

MASKING_MODES = ("token", "whole_word", "span")


def pad_sequences(sequences: Sequence[Sequence[int]], pad_token_id: int, pad_to_multiple_of: int = 8) -> dict:
    """Right-pad variable-length sequences to the longest, rounded up to a multiple (tensor cores like multiples of 8).

    Returns ``input_ids`` [B, L'] and ``attention_mask`` [B, L'] (1 on real tokens)."""
    longest = max(len(s) for s in sequences)
    if pad_to_multiple_of and pad_to_multiple_of > 1:
        longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(sequences), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.as_tensor(list(sequence), dtype=torch.long)
        attention_mask[row, : len(sequence)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _as_batch(features, pad_token_id: int, pad_to_multiple_of: int) -> dict:
    """Accept a dict of [B, L] tensors (packed blocks) or a list of per-example dicts (padded here)."""
    if isinstance(features, dict):
        return dict(features)
    batch = pad_sequences([f["input_ids"] for f in features], pad_token_id, pad_to_multiple_of)
    if "word_starts" in features[0]:
        starts = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
        for row, f in enumerate(features):
            starts[row, : len(f["word_starts"])] = torch.as_tensor(list(f["word_starts"]), dtype=torch.bool)
        batch["word_starts"] = starts
    return batch


def clipped_geometric_mean(success_probability: float, max_length: int) -> float:
    """Mean of min(Geometric(p), max_length) with support 1, 2, ...: sum_{k<max} (1-p)^k."""
    return (1 - (1 - success_probability) ** max_length) / success_probability


def _bisect(function, low: float, high: float, target: float, increasing: bool, steps: int = 60) -> float:
    for _ in range(steps):
        middle = (low + high) / 2
        if (function(middle) < target) == increasing:
            low = middle
        else:
            high = middle
    return (low + high) / 2


class MaskedLanguageModelingCollator:
    """Masked-LM targets: choose positions, then replace 80% with [MASK], 10% with a random token, keep 10%.

    Args:
        mask_token_id: id of the mask token.
        vocab_size: random replacements are drawn from ``[0, vocab_size)`` minus the special ids.
        special_token_ids: ids never masked (CLS, SEP, PAD, ...).
        pad_token_id: used when padding variable-length examples.
        mlm_probability: fraction of (non-special) tokens to predict.
        mask_replace_probability: of the chosen tokens, the fraction replaced by [MASK].
        random_replace_probability: of the chosen tokens, the fraction replaced by a random token (rest unchanged).
        masking: 'token' (independent tokens), 'whole_word' (all pieces of a word together) or 'span' (SpanBERT-style
            spans of whole words with clipped-geometric lengths).
        fixed_mask_count: 'token' only: mask exactly round(p x candidates) tokens per sequence (static shapes).
        mean_span_length, max_span_length: span masking: mean and maximum span length in words.
        seed: seed of the collator's generator.
        pad_to_multiple_of: padding multiple for variable-length examples.
    """

    def __init__(self, *, mask_token_id: int, vocab_size: int, special_token_ids: Sequence[int], pad_token_id: int,
                 mlm_probability: float = 0.15, mask_replace_probability: float = 0.8,
                 random_replace_probability: float = 0.1, masking: str = "token", fixed_mask_count: bool = False,
                 mean_span_length: float = 3.8, max_span_length: int = 10, seed: int = 0, pad_to_multiple_of: int = 8):
        if masking not in MASKING_MODES:
            raise ValueError(f"unknown masking {masking!r}; choose one of {MASKING_MODES}")
        if not 0 < mlm_probability < 1:
            raise ValueError(f"mlm_probability={mlm_probability} must be in (0, 1)")
        if mask_replace_probability < 0 or random_replace_probability < 0 or mask_replace_probability + random_replace_probability > 1:
            raise ValueError("mask_replace_probability + random_replace_probability must be within [0, 1]")
        if fixed_mask_count and masking != "token":
            raise ValueError("fixed_mask_count works with masking='token' only")
        if masking == "span" and not 1 <= mean_span_length < max_span_length:
            raise ValueError(f"mean_span_length={mean_span_length} must be in [1, max_span_length={max_span_length})")
        self.mask_token_id = mask_token_id
        self.pad_token_id = pad_token_id
        self.mlm_probability = mlm_probability
        self.mask_replace_probability = mask_replace_probability
        self.random_replace_probability = random_replace_probability
        self.masking = masking
        self.fixed_mask_count = fixed_mask_count
        self.max_span_length = max_span_length
        self.pad_to_multiple_of = pad_to_multiple_of
        special = torch.zeros(max(vocab_size, max(special_token_ids, default=0) + 1), dtype=torch.bool)
        special[list(special_token_ids)] = True
        self.is_special = special  # [V'] lookup table
        self.random_token_ids = torch.nonzero(~special[:vocab_size]).flatten()
        self.generator = torch.Generator().manual_seed(seed)
        if masking == "span":
            # Geometric parameter whose clipped mean is the requested mean; then the span-start rate whose union of
            # spans covers mlm_probability of the words: 1 - prod_k (1 - q * P(len > k)) = p.
            self.span_success = _bisect(lambda g: clipped_geometric_mean(g, max_span_length), 1e-6, 1.0,
                                        mean_span_length, increasing=False)
            survival = [(1 - self.span_success) ** k for k in range(max_span_length)]
            coverage = lambda q: 1 - math.prod(1 - q * s for s in survival)  # noqa: E731
            self.span_start_probability = _bisect(coverage, 0.0, 1.0, mlm_probability, increasing=True)

    @classmethod
    def from_tokenizer(cls, tokenizer, *, seed: int = 0, vocab_size: int | None = None, **options):
        """A collator with the mask, pad and special ids of ``tokenizer``; ``options``: the keyword arguments above.

        Args:
            tokenizer: a transformers tokenizer with a mask token.
            seed: generator seed.
            vocab_size: random-replacement range (defaults to len(tokenizer)).
        """
        if tokenizer.mask_token_id is None:
            raise ValueError("masked-LM needs a tokenizer with a mask token; train one for an encoder "
                             "(train_tokenizer(..., encoder=True))")
        return cls(mask_token_id=tokenizer.mask_token_id, vocab_size=vocab_size or len(tokenizer),
                   special_token_ids=tokenizer.all_special_ids, pad_token_id=pad_token_id_of(tokenizer), seed=seed,
                   **options)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def __call__(self, features) -> dict:
        batch = _as_batch(features, self.pad_token_id, self.pad_to_multiple_of)
        input_ids = batch["input_ids"].long()  # [B, L]
        attention = batch.get("attention_mask")
        candidates = ~self.is_special[input_ids]  # [B, L]
        if attention is not None:
            candidates &= attention.bool()
        if self.masking == "token":
            chosen = self._choose_tokens(candidates)
        else:
            starts = batch.get("word_starts")
            if starts is None:
                if self.masking == "whole_word":
                    raise ValueError("whole-word masking needs word_starts in the batch (pack with with_word_starts=True)")
                starts = torch.ones_like(candidates)  # span masking over tokens
            chosen = self._choose_words(candidates, starts.bool())
        labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
        draw = torch.rand(input_ids.shape, generator=self.generator)
        replace_mask = chosen & (draw < self.mask_replace_probability)
        replace_random = chosen & ~replace_mask & (draw < self.mask_replace_probability + self.random_replace_probability)
        random_ids = self.random_token_ids[torch.randint(len(self.random_token_ids), input_ids.shape, generator=self.generator)]
        masked_ids = torch.where(replace_mask, torch.full_like(input_ids, self.mask_token_id), input_ids)
        masked_ids = torch.where(replace_random, random_ids, masked_ids)
        out = {"input_ids": masked_ids, "labels": labels}
        if attention is not None and not bool(attention.all()):
            out["attention_mask"] = attention.long()
        return out

    def _choose_tokens(self, candidates: torch.Tensor) -> torch.Tensor:
        scores = torch.rand(candidates.shape, generator=self.generator)  # [B, L]
        if not self.fixed_mask_count:
            return candidates & (scores < self.mlm_probability)
        # Exactly round(p * candidates) per row: the k best scores among candidates.
        counts = torch.round(candidates.sum(1).float() * self.mlm_probability).long().clamp(min=1)  # [B]
        scores = scores.masked_fill(~candidates, -1.0)
        order = scores.argsort(dim=1, descending=True)  # [B, L]
        ranks = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1]).expand_as(order))
        return candidates & (ranks < counts[:, None])

    def _choose_words(self, candidates: torch.Tensor, word_starts: torch.Tensor) -> torch.Tensor:
        batch_size, length = candidates.shape
        positions = torch.arange(length).expand(batch_size, length)
        # A word starts at a flagged token, at a special token, and right after one (a word cut by a block edge).
        after_special = torch.ones_like(candidates)
        after_special[:, 1:] = ~candidates[:, :-1]
        is_start = word_starts | ~candidates | after_special  # [B, L]
        if self.masking == "whole_word":
            start_of_word = torch.where(is_start, positions, torch.zeros_like(positions)).cummax(dim=1).values  # [B, L]
            word_chosen = torch.rand(candidates.shape, generator=self.generator) < self.mlm_probability  # by start
            return candidates & word_chosen.gather(1, start_of_word)
        # Span masking in word space: word index per token, spans start at a word slot with probability q.
        word_index = is_start.long().cumsum(1) - 1  # [B, L], 0-based word number
        span_starts = torch.rand(candidates.shape, generator=self.generator) < self.span_start_probability  # [B, W=L]
        uniform = torch.rand(candidates.shape, generator=self.generator).clamp_min(1e-12)
        lengths = (1 + torch.floor(torch.log(uniform) / math.log1p(-self.span_success))).clamp(max=self.max_span_length).long()
        difference = torch.zeros(batch_size, length + 1, dtype=torch.long)  # +1 at a span's start, -1 after its end
        difference[:, :length] += span_starts.long()
        ends = (positions + lengths).clamp(max=length)
        difference.scatter_add_(1, ends, -span_starts.long())
        covered = difference.cumsum(1)[:, :length] > 0  # [B, W]
        return candidates & covered.gather(1, word_index)


class CausalLanguageModelingCollator:
    """Next-token targets: labels are the inputs (the model shifts them), -100 on padding so no loss crosses it."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 8):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    @classmethod
    def from_tokenizer(cls, tokenizer):
        pad = pad_token_id_of(tokenizer)
        return cls(pad_token_id=pad if pad is not None else 0)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def __call__(self, features) -> dict:
        batch = _as_batch(features, self.pad_token_id, self.pad_to_multiple_of)
        input_ids = batch["input_ids"].long()
        labels = input_ids.clone()
        out = {"input_ids": input_ids, "labels": labels}
        attention = batch.get("attention_mask")
        if attention is not None and not bool(attention.all()):
            labels[~attention.bool()] = -100
            out["attention_mask"] = attention.long()
        return out


def pad_token_id_of(tokenizer) -> int | None:
    """The tokenizer's pad id, else its eos id (decoders often have no pad token)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
