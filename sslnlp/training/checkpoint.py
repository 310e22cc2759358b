"""Atomic save / exact resume of training state.

A checkpoint is a directory ``OUTPUT_DIR/checkpoints/checkpoint-00000100`` holding

- what ``accelerator.save_state`` writes (model as safetensors, optimizer, RNG states of every rank; under FSDP the
  sharded model and optimizer: ``pytorch_model_fsdp_0/`` and ``optimizer_0/``, one ``.distcp`` file per rank),
- ``rank_state_R.json`` per rank (data-stream position, shuffle buffer, mask generator),
- with weight averaging (training.ema_decay) the average: ``weight_average.safetensors``, or one
  ``weight_average_rank_R.safetensors`` per rank under FSDP (sslnlp.training.averaging),
- ``loop_state.json`` (step, tokens seen, elapsed time, the layout that wrote it, the checkpoint format, the size of
  every file above), written last.

It is written under a temporary name and renamed into place only when complete, so a crash mid-save leaves at
worst a ``.tmp-*`` directory that is never picked up; ``find_latest_checkpoint`` only accepts directories with
``loop_state.json``. Under FSDP every rank writes its shard files into the same temporary directory; the rename
waits for all of them (an all-reduce after the writes). A checkpoint resumes only with the engine that wrote its
layout (``check_checkpoint_layout``), on any number of processes where that engine allows (``sslnlp.training.elastic``).
A checkpoint of another format, or with a file whose size is not the recorded one (truncated, copied in part), is
refused in one line before anything is loaded.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from safetensors import SafetensorError

from sslnlp.files import LOOP_STATE, checkpoints_root, find_latest_checkpoint, fsync_path, list_checkpoints, write_json_atomic

CHECKPOINT_FORMAT = 2  # 2: data positions of prepared shards are global (any number of processes); layout recorded


def resolve_resume(resume_from_checkpoint: str | None, output_dir: str | Path) -> Path | None:
    """'auto' -> newest complete checkpoint (or None); a path -> that checkpoint, which must be complete."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "auto":
        return find_latest_checkpoint(output_dir)
    path = Path(resume_from_checkpoint)
    if not (path / LOOP_STATE).is_file():
        raise ValueError(f"training.resume_from_checkpoint={str(path)!r} is not a complete checkpoint (no {LOOP_STATE}); "
                         f"use 'auto' or one of {[str(p) for _, p in list_checkpoints(output_dir)][-3:]}")
    return path


def _raise_if_any_rank_failed(accelerator, failure: BaseException | None, what: str) -> None:
    """All ranks agree on success (one small all-reduce), so a failed write on one rank makes every rank raise
    instead of leaving the others waiting at the next barrier."""
    failed = failure is not None
    if accelerator.num_processes > 1:
        import torch

        flag = accelerator.reduce(torch.tensor([float(failed)], device=accelerator.device), "sum")
        failed = bool(flag.item())
    if failed:
        if failure is not None:
            raise failure
        raise OSError(f"another rank failed while {what}")


def save_checkpoint(accelerator, output_dir: str | Path, step: int, loop_state: dict, rank_state: dict, keep: int,
                    write_extra=None) -> Path:
    """Save a complete checkpoint for ``step`` atomically; keep the newest ``keep``. Call on every rank.
    ``write_extra(directory)``: what this rank writes besides Accelerate's state (the weight average).

    On a write error (disk full, permissions) the partial directory is removed, the previous checkpoints stay as
    they were, and every rank raises the OSError.
    """
    root = checkpoints_root(output_dir)
    final = root / f"checkpoint-{step:08d}"
    temporary = root / f".tmp-checkpoint-{step:08d}"
    failure = None
    try:
        if accelerator.is_main_process:
            if temporary.exists():
                shutil.rmtree(temporary)
            temporary.mkdir(parents=True)
    except OSError as error:
        failure = error
    _raise_if_any_rank_failed(accelerator, failure, "creating the checkpoint directory")
    try:
        accelerator.save_state(str(temporary), safe_serialization=True)
        write_json_atomic(temporary / f"rank_state_{accelerator.process_index}.json", rank_state, durable=True)
        if write_extra is not None:
            write_extra(temporary)
    except OSError as error:
        failure = error
    except SafetensorError as error:  # safetensors reports a full disk as its own error type
        failure = OSError(str(error).split(": ", 1)[-1])
    except BaseException as error:  # FSDP's sharded writes (torch.distributed.checkpoint): every rank raises
        if type(error).__name__ != "CheckpointException":
            raise
        failure = distributed_checkpoint_error(error)
    try:
        _raise_if_any_rank_failed(accelerator, failure, "writing the checkpoint")
    except OSError:
        if accelerator.is_main_process:
            shutil.rmtree(temporary, ignore_errors=True)  # free the space; it never looked complete anyway
        raise
    if accelerator.is_main_process:
        try:
            files = {str(file.relative_to(temporary)): file.stat().st_size for file in sorted(temporary.rglob("*"))
                     if file.is_file()}
            loop_state = {**loop_state, "format": CHECKPOINT_FORMAT, "files": files}
            write_json_atomic(temporary / LOOP_STATE, loop_state, durable=True)
            fsync_path(temporary)
            if final.exists():  # the same step saved again (resume then immediate save): replace it whole
                shutil.rmtree(final)
            os.replace(temporary, final)
            fsync_path(root)
        except OSError as error:
            failure = error
            shutil.rmtree(temporary, ignore_errors=True)
    _raise_if_any_rank_failed(accelerator, failure, "completing the checkpoint")
    if accelerator.is_main_process:
        for _, old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def distributed_checkpoint_error(error: BaseException) -> OSError:
    """torch.distributed.checkpoint's CheckpointException (a BaseException holding each failed rank's exception) as
    the OSError of the first failure, so a failed sharded write is reported like any other failed save."""
    failures = getattr(error, "failures", {}) or {}
    for rank, (cause, _) in sorted(failures.items()):
        if isinstance(cause, OSError):
            return cause
        return OSError(f"rank {rank}: {type(cause).__name__}: {cause}")
    return OSError(str(error).splitlines()[0])


def checkpoint_layout(path: Path) -> str:
    """What wrote the model state of a checkpoint: 'FSDP (sharded)', 'FSDP (full state dict)', 'DeepSpeed' or 'data
    parallel' (an ordinary model file, written by DDP or one process)."""
    if any(path.glob("pytorch_model_fsdp_*/.metadata")):
        return "FSDP (sharded)"
    if any(path.glob("pytorch_model_fsdp*.bin")):
        return "FSDP (full state dict)"
    if (path / "pytorch_model").is_dir():
        return "DeepSpeed"
    return "data parallel"


def running_layout(accelerator) -> str:
    """The ``checkpoint_layout`` that this Accelerator's ``save_state`` writes (and ``load_state`` reads)."""
    engine = accelerator.distributed_type.name
    if engine == "FSDP":
        sharded = accelerator.state.fsdp_plugin.state_dict_type.name == "SHARDED_STATE_DICT"
        return "FSDP (sharded)" if sharded else "FSDP (full state dict)"
    return "DeepSpeed" if engine == "DEEPSPEED" else "data parallel"


def read_loop_state(path: Path) -> dict:
    """The checkpoint's loop state, refused in one line when another checkpoint format wrote it."""
    loop_state = json.loads((path / LOOP_STATE).read_text())
    written = loop_state.get("format", 1)
    if written != CHECKPOINT_FORMAT:
        version = ((loop_state.get("provenance") or {}).get("versions") or {}).get("sslnlp") or "an older version"
        raise ValueError(f"{path} was written by sslnlp {version} (checkpoint format {written}); this sslnlp reads "
                         f"format {CHECKPOINT_FORMAT}: resume it with sslnlp {version}, or start a new output_dir")
    return loop_state


def check_checkpoint_layout(accelerator, path: Path) -> None:
    """Refuse, with one line and before loading anything, a checkpoint that another engine wrote (a sharded FSDP
    checkpoint resumed by data parallel, or the reverse): its shards and optimizer state would not fit this run."""
    written, running = checkpoint_layout(path), running_layout(accelerator)
    if written != running:
        raise ValueError(f"{path} was written by {written} but this run is {running} "
                         f"({accelerator.distributed_type.name}); resume it with the launch config that wrote it")


def check_checkpoint_files(path: Path, loop_state: dict) -> None:
    """Refuse, naming the file, a checkpoint with a file missing or of another size than when it was written (a
    truncated copy, a damaged disk): loading it would fail deep inside torch, or worse, not fail."""
    for name, size in loop_state.get("files", {}).items():
        file = path / name
        found = file.stat().st_size if file.is_file() else None
        if found != size:
            state = "is missing" if found is None else f"has {found:,} bytes where {size:,} were written"
            earlier = [str(p) for _, p in list_checkpoints(path.parent.parent) if p != path][-1:]
            raise ValueError(f"{file} {state}: the checkpoint is damaged; resume from "
                             f"{earlier[0] if earlier else 'an earlier checkpoint'} (training.resume_from_checkpoint="
                             "PATH), or copy the checkpoint again whole")


def adopt_random_state(accelerator, path: Path) -> None:
    """A process new to the run (resumed on more processes) takes rank 0's saved random state: every rank of a run
    starts from the same seed, so it is the state this rank would have had."""
    import random

    import numpy as np
    import torch

    if (path / f"random_states_{accelerator.process_index}.pkl").is_file() or not (path / "random_states_0.pkl").is_file():
        return
    states = torch.load(path / "random_states_0.pkl", weights_only=False)
    random.setstate(states["random_state"])
    np.random.set_state(states["numpy_random_seed"])
    torch.set_rng_state(states["torch_manual_seed"])
    if accelerator.device.type == "cuda" and "torch_cuda_manual_seed" in states:
        torch.cuda.set_rng_state(states["torch_cuda_manual_seed"][0], accelerator.device)


def load_checkpoint(accelerator, path: Path, every_rank: bool = False) -> tuple[dict, list[dict]]:
    """Restore model / optimizer / RNG through Accelerate; return (loop_state, rank states): this rank's alone, or
    (``every_rank``, a resume on another layout) those of every rank that wrote the checkpoint, in rank order."""
    check_checkpoint_layout(accelerator, path)
    loop_state = read_loop_state(path)
    check_checkpoint_files(path, loop_state)
    try:
        accelerator.load_state(str(path))
    except Exception as error:  # noqa: BLE001 - safetensors, pickle or torch.distributed.checkpoint: one line
        text = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path} cannot be loaded into this run ({type(error).__name__}: {text}); with the model "
                         "settings it was trained with, the checkpoint is damaged: resume from an earlier one "
                         "(training.resume_from_checkpoint=PATH)") from None
    adopt_random_state(accelerator, path)
    ranks = sorted(int(file.stem.rsplit("_", 1)[1]) for file in path.glob("rank_state_*.json"))
    wanted = ranks if every_rank else [accelerator.process_index]
    if not every_rank and accelerator.process_index not in ranks:
        raise ValueError(f"{path} has no state for rank {accelerator.process_index}; the checkpoint is damaged")
    return loop_state, [json.loads((path / f"rank_state_{rank}.json").read_text()) for rank in wanted]
