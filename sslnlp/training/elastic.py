"""Resuming on another number of processes (or DataLoader workers) than the checkpoint's run had.

A checkpoint records the layout that wrote it (``loop_state["layout"]``: processes, data workers, per-device batch,
gradient accumulation). A resume with another layout keeps what the run is:

- **the global batch** (blocks per optimizer step): gradient accumulation is recomputed for the new number of
  processes, or the resume is refused in one line when no whole number of micro-batches gives it. SimCSE keeps the
  sentences of a micro-batch across processes instead (its in-batch negatives): the per-device batch is recomputed.
- **the schedule**: the learning rate is a function of the step and the budget, and the budget in steps does not
  change when the global batch does not; token counts continue from the checkpoint's.
- **the weights and optimizer state**: whole files under data parallel; FSDP's sharded files are resharded on load
  by ``torch.distributed.checkpoint``. A process new to the run takes rank 0's random state (every rank starts a run
  from the same seed, so that is what it would have had).
- **the data position**: ``BlockSource.resume_state``: prepared shards continue exactly (their order does not depend
  on the number of readers); streamed text continues from the furthest shard, with what that skipped counted.

``plan_resize`` decides (before anything is built), ``announce`` says it in one line; the run keeps the record in its
loop state (``resizes``), ``summary.json`` and the report.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sslnlp.runtime import TrainingError

RESIZABLE = ("data parallel", "FSDP (sharded)")


@dataclass(frozen=True)
class Resize:
    """The checkpoint's layout and this run's: (before, after) pairs."""

    processes: tuple[int, int]
    workers: tuple[int, int]
    per_device_batch: tuple[int, int]
    accumulation: tuple[int, int]
    engine: str

    @property
    def global_batch(self) -> int:
        return self.per_device_batch[0] * self.accumulation[0] * self.processes[0]

    def as_record(self, step: int, data: dict) -> dict:
        return {"step": step, "engine": self.engine, "processes": list(self.processes), "workers": list(self.workers),
                "per_device_train_batch_size": list(self.per_device_batch),
                "gradient_accumulation_steps": list(self.accumulation), "global_batch_blocks": self.global_batch,
                **data}


def current_layout(config, processes: int) -> dict:
    """What a checkpoint of this run records about the layout that wrote it."""
    return {"processes": processes, "data_workers": config.data.num_workers,
            "per_device_train_batch_size": config.training.per_device_train_batch_size,
            "gradient_accumulation_steps": config.training.gradient_accumulation_steps}


def plan_resize(checkpoint, saved_layout: dict, config, processes: int, engine: str, objective):
    """(config for this run, Resize or None): None when the checkpoint's layout is this run's; else the config with
    the accumulation (or SimCSE's per-device batch) that keeps the checkpoint's global batch. Refuses in one line
    what cannot continue: another engine layout than data parallel or sharded FSDP, or a global batch that no whole
    number of micro-batches gives."""
    training = config.training
    before_batch, before_accumulation = saved_layout["per_device_train_batch_size"], saved_layout["gradient_accumulation_steps"]
    before_processes, before_workers = saved_layout["processes"], saved_layout["data_workers"]
    after_batch, after_workers = training.per_device_train_batch_size, config.data.num_workers
    if (before_processes, before_workers, before_batch) == (processes, after_workers, after_batch):
        return config, None
    if engine not in RESIZABLE:
        raise TrainingError(f"{checkpoint} was written by {before_processes} process(es) under {engine}, which sslnlp "
                            f"resumes only on the same number of processes and workers; relaunch with "
                            f"{before_processes} process(es) and data.num_workers={before_workers}")
    global_batch = before_batch * before_accumulation * before_processes
    where = (f"{checkpoint} trained with a global batch of {global_batch} blocks ({before_batch} per device x "
             f"{before_accumulation} accumulation x {before_processes} process(es))")
    if objective.contrasts_across_ranks and processes != before_processes:
        sentences = before_batch * before_processes  # the in-batch negatives of one micro-batch
        if sentences % processes:
            raise TrainingError(f"{where}; SimCSE's in-batch negatives are the {sentences} sentences of a micro-batch on "
                                f"every process, which {processes} processes cannot share evenly: resume on a number "
                                f"of processes dividing {sentences}")
        after_batch = sentences // processes
    if global_batch % (after_batch * processes):
        per_process = global_batch // processes
        hint = (f"set training.per_device_train_batch_size to a divisor of {per_process} (e.g. "
                f"{max(d for d in range(1, after_batch + 1) if per_process % d == 0)})" if global_batch % processes == 0
                else f"resume on a number of processes dividing {global_batch}")
        raise TrainingError(f"{where}; {processes} process(es) x per_device_train_batch_size={after_batch} cannot "
                            f"keep it with whole micro-batches: {hint}")
    accumulation = global_batch // (after_batch * processes)
    config = dataclasses.replace(config, training=dataclasses.replace(
        training, per_device_train_batch_size=after_batch, gradient_accumulation_steps=accumulation))
    return config, Resize(processes=(before_processes, processes), workers=(before_workers, after_workers),
                          per_device_batch=(before_batch, after_batch), accumulation=(before_accumulation, accumulation),
                          engine=engine)


def announce(resize: Resize, step: int, data: dict) -> str:
    """The resize in one line: from what to what, what is exact and what is not."""
    changes = []
    if resize.processes[0] != resize.processes[1]:
        changes.append(f"{resize.processes[0]} -> {resize.processes[1]} processes")
    if resize.workers[0] != resize.workers[1]:
        changes.append(f"data workers {resize.workers[0]} -> {resize.workers[1]}")
    kept = (f"global batch {resize.global_batch} blocks kept (per-device batch {resize.per_device_batch[0]} -> "
            f"{resize.per_device_batch[1]}, gradient accumulation {resize.accumulation[0]} -> {resize.accumulation[1]})")
    if data.get("exact"):
        same_masks = resize.per_device_batch[0] == resize.per_device_batch[1]
        reading = ("data exact: the blocks the uninterrupted run reads" + (", with its masks" if same_masks else
                                                                           ", masks drawn anew (micro-batches differ)")
                   + f", from position {data.get('position', 0):,}")
    else:
        behind = data.get("shards_an_epoch_behind") or []
        reading = (f"streamed data continues after record {data['record']:,} of epoch {data['epoch']}: no document read "
                   f"twice, {data['blocks_handed_over']:,} buffered block(s) and {data['tokens_handed_over']:,} "
                   f"carried-over token(s) handed over, {data['records_skipped']:,} record(s) of slower shards skipped"
                   + (f" (and the rest of the epoch of shard(s) {behind}, uncounted)" if behind else ""))
    return (f"resuming at step {step} on another layout ({resize.engine}): {', '.join(changes)}; {kept}; schedule and "
            f"token counts continue; {reading}; not bit for bit: the reduction order (fp32 rounding) and per-process "
            "random draws (dropout, sampled replacements)")
