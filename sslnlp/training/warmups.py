"""Batch-size ramp and sequence-length warmup: a step's size as a function of the fraction of the budget it starts at.

- **Batch-size ramp** (``training.batch_size_warmup``; Cramming's ramp): over that fraction of the budget the global
  batch grows linearly from ``batch_size_warmup_start`` of it to all of it, by accumulating more micro-batches of
  the same size (1 .. gradient_accumulation_steps): the data stream, the masks and a resume on another number of
  processes see micro-batches as always.
- **Sequence-length warmup** (``training.sequence_length_warmup``; Composer's SeqLengthWarmup, its token-keeping
  mode): over that fraction the blocks are cut into shorter ones, from ``sequence_length_warmup_start`` tokens up to
  ``data.max_seq_length`` (``BlockLayout.cut``: each block's content in equal pieces, each with the block's special
  tokens), so a step trains on the same text, in shorter sequences. Packed text and prepared shards alike.

Both are functions of the step's progress alone (``step / budget_steps``, or the clock's share of max_time), so a
resumed run takes the steps the uninterrupted one took. With a token budget and a ramp the number of steps is solved
once (``steps_for_tokens``), so the learning-rate schedule stays one of steps.
"""

from __future__ import annotations

import math


def share(progress: float, warmup: float, start: float) -> float:
    """The fraction of the full size at ``progress``: ``start`` growing linearly to 1 over ``warmup`` of the budget."""
    if warmup <= 0:
        return 1.0
    return start + (1 - start) * min(1.0, max(progress, 0.0) / warmup)


def micro_batches_at(progress: float, accumulation: int, warmup: float, start: float) -> int:
    """Micro-batches of a step starting at ``progress``: its share of ``accumulation``, rounded half up, at least one."""
    return max(1, min(accumulation, math.floor(accumulation * share(progress, warmup, start) + 0.5)))


def block_length_at(progress: float, max_length: int, specials: int, warmup: float, start: int) -> int:
    """The block length of a step starting at ``progress``: the longest that cuts a block's ``max_length - specials``
    content tokens into equal pieces and does not exceed the warmup's target length (at least the shortest piece)."""
    if warmup <= 0 or progress >= warmup:
        return max_length
    target = start + (max_length - start) * max(progress, 0.0) / warmup
    content = max_length - specials
    pieces = next((k for k in range(1, content + 1) if content % k == 0 and content // k + specials <= target), content)
    return content // pieces + specials


def steps_for_tokens(max_tokens: int, step_tokens: int, accumulation: int, warmup: float, start: float) -> int:
    """The fewest steps whose tokens reach ``max_tokens`` when a step of full size has ``step_tokens`` and the batch
    ramps (a step at progress ``s / steps`` has ``micro_batches_at(...) / accumulation`` of them)."""
    def tokens(steps: int) -> int:
        micro = sum(micro_batches_at(step / steps, accumulation, warmup, start) for step in range(steps))
        return micro * step_tokens // accumulation

    low, high = max(1, math.ceil(max_tokens / step_tokens)), max(1, math.ceil(max_tokens / step_tokens))
    while tokens(high) < max_tokens:
        low, high = high, high * 2
    while low < high:  # the smallest number of steps that reaches the budget (tokens grow with the steps)
        middle = (low + high) // 2
        low, high = (middle + 1, high) if tokens(middle) < max_tokens else (low, middle)
    return low
