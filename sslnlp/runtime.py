"""Runtime pieces shared by pretraining and fine-tuning: the Accelerator, precision, preemption, optimizer groups,
the learning-rate schedule and the metrics log. Below every module that trains; imports nothing of sslnlp's.
"""

from __future__ import annotations

import json
import math
import signal
import sys
from pathlib import Path

import torch


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite steps, unwritable checkpoints): one line saying what to do."""


def make_accelerator(**options):
    """An Accelerator. When this process already made one with other settings (pretrain() in bf16 then again in
    fp32, in a notebook or a benchmark), the process-wide precision state is reset first, never the distributed one.
    An FSDP launch on CPUs is set up as FSDP2 on gloo (``rehearse_fsdp_on_cpus``)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    try:
        accelerator = Accelerator(**options)
    except ValueError as error:
        if "already been initialized" not in str(error):
            raise
        AcceleratorState._reset_state(reset_partial_state=False)
        accelerator = Accelerator(**options)
    rehearse_fsdp_on_cpus(accelerator)
    return accelerator


def rehearse_fsdp_on_cpus(accelerator) -> None:
    """An FSDP launch on CPUs (recipes/accelerate/fsdp-cpu-2proc.yaml, ACCELERATE_USE_CPU=1) runs as FSDP2 on gloo,
    so a laptop rehearses what GPUs will do: sharded training, sharded checkpoints, resume and export.

    Accelerate 1.15 never sets FSDP up on CPUs: ``PartialState._prepare_backend`` (accelerate/state.py) names a
    CPU launch MULTI_CPU (backend gloo), and ``AcceleratorState.__init__`` promotes to FSDP only the MULTI_GPU-like
    types, so the plugin it built from the FSDP_* variables is dropped and the run would train as plain data
    parallel (which ``check_engine`` refuses). FSDP2 itself works on CPU tensors and gloo; this sets the state
    Accelerate would have set on GPUs: distributed type FSDP (in both shared states) and the FSDP2 plugin read
    from the launcher's FSDP_* variables, with the run's mixed precision. A no-op for every other launch."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if requested_engine() != "FSDP" or accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin = FullyShardedDataParallelPlugin()  # from FSDP_VERSION, FSDP_STATE_DICT_TYPE, ... as accelerate launch set them
    if plugin.fsdp_version != 2:
        raise TrainingError(f"the launch config asks for FSDP version {plugin.fsdp_version}; sslnlp runs FSDP on CPUs "
                            "with FSDP2 only: set fsdp_config.fsdp_version: 2 (recipes/accelerate/fsdp-cpu-2proc.yaml)")
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def check_launch() -> None:
    """Refuse, before anything is written, a launch whose processes each believe they are alone: the launcher
    (torchrun, accelerate launch) started WORLD_SIZE processes but Accelerate set up fewer (a CPU launch without
    ACCELERATE_USE_CPU=1, a GPU launch on a machine without GPUs): every process would train the whole model on the
    whole data and write the same run directory."""
    import os

    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched <= 1:
        return
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))  # as AcceleratorState would set it up
    if state.num_processes != launched:
        raise TrainingError(
            f"this process was launched as rank {os.environ.get('RANK', '?')} of WORLD_SIZE={launched}, but Accelerate "
            f"set up {state.num_processes} process(es) ({state.distributed_type}): each would train alone and write the "
            "same run; on CPUs launch with ACCELERATE_USE_CPU=1 and --multi_gpu (recipes/accelerate/cpu-2proc.yaml), on "
            "GPUs check that every process sees one")


def requested_engine() -> str | None:
    """The sharded engine the launch config named ("FSDP" or "DEEPSPEED"; None for data parallel or one process):
    `accelerate launch` passes it to each process as ACCELERATE_USE_FSDP / ACCELERATE_USE_DEEPSPEED."""
    from accelerate.utils import parse_flag_from_env

    if parse_flag_from_env("ACCELERATE_USE_FSDP"):
        return "FSDP"
    if parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        return "DEEPSPEED"
    return None


def check_engine(accelerator) -> None:
    """Refuse, before anything is written, a run whose Accelerator uses another engine than the launch config named.
    Accelerate 1.15 falls back silently: with ACCELERATE_USE_CPU=1 (state.py never promotes MULTI_CPU to FSDP or
    DeepSpeed) a sharded config trains as plain data parallel and writes unsharded checkpoints."""
    requested = requested_engine()
    running = accelerator.distributed_type.name
    if requested is not None and running != requested:
        raise TrainingError(
            f"the launch config asks for {requested} but Accelerate set up {running} with {accelerator.num_processes} "
            f"process(es) on {accelerator.device.type}: this run would not shard what {requested} shards; "
            + ("DeepSpeed runs on GPUs (on CPUs use recipes/accelerate/cpu-2proc.yaml for data parallel)"
               if requested == "DEEPSPEED" else
               "launch FSDP on GPUs, or on CPUs with recipes/accelerate/fsdp-cpu-2proc.yaml"))


def use_deterministic_algorithms() -> None:
    """Deterministic kernels for this process (torch's switch, cuDNN without autotuning, a fixed cuBLAS workspace:
    set before the first matmul creates the cuBLAS handle). On GPUs, scatter/index-add backward (embeddings) and
    attention backward otherwise add in a varying order."""
    import os

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def resolve_mixed_precision(setting: str) -> str:
    """'auto' -> bf16 on GPUs that support it and on CPUs with native bf16 (AVX-512 BF16 / AMX), else 'no'."""
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "no"
    return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "no"


def keep_freed_memory(device) -> None:
    """On a CPU, keep freed large blocks in the heap instead of handing them back to the kernel (Linux, glibc).

    glibc serves every allocation above its mmap threshold (32 MB at most) with a fresh mmap and unmaps it on free,
    so each step page-faults its largest tensors in again: the [N, V] logits and their gradient, the embedding
    gradient, BERT-base's activations. In a VM faults are dear: on the development machine a 74 MB memset took
    22 ms instead of 1.6 ms; the tiny BERT's step is ~20% faster in bf16 and ~5% in fp32 with this. The heap then
    stays near the step's peak (it levels off: SparseMaskedLMHead.ROWS_MULTIPLE). Process-wide; no-op elsewhere.
    """
    if device.type != "cpu" or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
    mallopt(M_MMAP_THRESHOLD, 1 << 30)
    mallopt(M_TRIM_THRESHOLD, 1 << 30)


class PreemptionFlag:
    """Inside ``with``: SIGTERM / SIGINT (what SLURM and spot instances send) set ``raised`` instead of killing the
    process; the loop saves a checkpoint at the next step boundary, all ranks together, and exits cleanly."""

    def __init__(self):
        self.raised = False
        self.previous = {}

    def _handle(self, signum, frame):
        if self.raised and signum == signal.SIGINT:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.raised = True

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def parameter_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on weight matrices only, never on biases or normalisation weights."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if parameter.ndim < 2 or "norm" in name.lower() or name.endswith(".bias"):
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def learning_rate_multiplier(progress: float, schedule: str, warmup: float, decay_ratio: float, min_ratio: float) -> float:
    """Multiplier of the peak learning rate at ``progress`` in [0, 1] of the budget (steps, tokens or time).

    Args:
        progress: fraction of the budget used.
        schedule: linear, cosine, constant, or wsd (warmup, stable, then linear decay over the last decay_ratio).
        warmup: warmup as a fraction of the budget.
        decay_ratio: wsd's decay share.
        min_ratio: floor at the end, as a fraction of the peak.
    """
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return progress / warmup
    rest = (progress - warmup) / max(1e-12, 1 - warmup)
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return min_ratio + (1 - min_ratio) * (1 - rest)
    if schedule == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * rest))
    if schedule == "wsd":
        if decay_ratio <= 0 or progress < 1 - decay_ratio:
            return 1.0
        return min_ratio + (1 - min_ratio) * (1 - progress) / decay_ratio
    raise ValueError(f"unknown lr_scheduler_type {schedule!r}; choose one of linear, cosine, constant, wsd")


class MetricsLog:
    """Appends JSON lines to OUTPUT_DIR/metrics.jsonl (main process) and forwards to Accelerate trackers."""

    def __init__(self, accelerator, path: Path, trackers: bool):
        self.accelerator = accelerator
        self.path = path
        self.trackers = trackers

    def write(self, record: dict) -> None:
        if self.accelerator.is_main_process:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        if self.trackers:
            self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record.get("step"))


def check_shared_output_dir(accelerator, output_dir: Path) -> None:
    """Several processes write one run directory (rank 0 the model and metrics, every rank its part of each
    checkpoint), so on several machines it must be one shared filesystem. A directory local to each machine would
    train to the end and leave every checkpoint incomplete; refuse that at start: rank 0 writes a random token that
    every rank must read back."""
    if accelerator.num_processes == 1:
        return
    import secrets

    from accelerate.utils import broadcast_object_list

    token = [secrets.token_hex(8) if accelerator.is_main_process else None]
    broadcast_object_list(token)
    marker = output_dir / ".sslnlp-shared-check"
    if accelerator.is_main_process:
        marker.write_text(token[0])
    accelerator.wait_for_everyone()
    try:
        seen = marker.read_text()
    except OSError:
        seen = None
    shared = seen == token[0]
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        marker.unlink(missing_ok=True)
    flags = accelerator.gather(torch.tensor([shared], device=accelerator.device)).tolist()
    blind = [str(rank) for rank, flag in enumerate(flags) if not flag]
    if blind:
        raise TrainingError(f"output_dir {output_dir} is not one directory for every process: rank "
                            f"{', '.join(blind)} cannot see what rank 0 wrote there; on several machines put output_dir "
                            "on a filesystem they all mount (checkpoints hold every rank's part)")
