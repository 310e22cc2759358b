"""Weight averaging (``training.ema_decay``): an exponential moving average of the trained weights, kept in fp32
beside the model, saved in every checkpoint, and swapped into the model for evaluation, probing and export.

    sslnlp pretrain recipes/tiny-cpu.yaml training.ema_decay=0.99                     # average from the first step
    sslnlp pretrain recipes/tiny-cpu.yaml training.ema_decay=0.999 training.ema_start=0.5

The rule, after every optimizer step that updated the weights (a skipped non-finite step leaves the average as it
is), for every trainable parameter: ``average = decay x average + (1 - decay) x weight``. The average starts as a
copy of the weights when training starts (timm's ModelEmaV3 and Composer's EMA do the same); a step that starts
before ``ema_start`` of the budget copies the weights into the average instead of averaging them. Frozen parameters
and buffers are not averaged: the averaged model uses the live ones, which is what copying them at every update
gives, since only a training step changes them.

Where the weights live decides where their average lives. One process or DDP: every rank holds the whole average
(the ranks hold the same weights, so they compute the same average) and the main process writes it into each
checkpoint as ``weight_average.safetensors``, which every rank reads on resume. FSDP2: each rank averages its own
shard of every parameter (the DTensor's ``to_local()``) and writes ``weight_average_rank_R.safetensors``; the export
gathers the averaged shards like the trained ones, because ``swapped_in`` writes the averaged values into the
model's own (sharded) parameters for as long as it lasts and restores the training weights, bit for bit, after.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from sslnlp.files import fsync_path
from sslnlp.runtime import TrainingError

logger = logging.getLogger(__name__)

REPLICATED_FILE = "weight_average.safetensors"


def local(tensor: torch.Tensor) -> torch.Tensor:
    """The part of ``tensor`` this rank holds: an FSDP2 DTensor's local shard (a view of its storage), else itself."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


class WeightAverage:
    """The exponential moving average of a model's trainable parameters (this rank's shards under FSDP2), in fp32.

    Args:
        model: the trained module, unwrapped from DDP (``accelerator.unwrap_model``); an FSDP2 module as it is.
        decay: the weight of the old average at each update, in (0, 1).
        process_index: this rank (names its checkpoint file under FSDP2).
        is_main_process: writes the checkpoint file when every rank holds the whole average.
    """

    def __init__(self, model: torch.nn.Module, decay: float, process_index: int = 0, is_main_process: bool = True):
        from torch.distributed.tensor import DTensor

        self.model, self.decay = model, decay
        self.process_index, self.is_main_process = process_index, is_main_process
        self.sharded = any(isinstance(p, DTensor) for p in model.parameters())
        # The names are fixed now; the parameters are looked up at each use, since an engine may re-point a
        # DTensor's local view (FSDP2's lazy initialisation) after this.
        self.names = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
        self.average = {name: weight.detach().float().clone() for name, weight in zip(self.names, self.weights())}

    def weights(self) -> list[torch.Tensor]:
        """The live trainable parameters (local shards), in the order of ``self.names``."""
        parameters = dict(self.model.named_parameters())
        return [local(parameters[name]).detach() for name in self.names]

    @torch.no_grad()
    def update(self, copy: bool = False) -> None:
        """Fold the current weights into the average (``copy``: replace the average by them)."""
        self.reshard()
        averages = [self.average[name] for name in self.names]
        weights = [weight.float() for weight in self.weights()]  # no copy for fp32 weights
        if copy:
            torch._foreach_copy_(averages, weights)
        else:
            torch._foreach_mul_(averages, self.decay)
            torch._foreach_add_(averages, weights, alpha=1 - self.decay)

    @contextlib.contextmanager
    def swapped_in(self):
        """The averaged weights in the model while the block runs; the training weights, exactly, after it."""
        with torch.no_grad():
            self.reshard()
            weights = self.weights()
            kept = [weight.clone() for weight in weights]
            torch._foreach_copy_(weights, [self.average[name] for name in self.names])
        try:
            yield
        finally:
            with torch.no_grad():
                self.reshard()
                torch._foreach_copy_(self.weights(), kept)

    def reshard(self) -> None:
        """FSDP2: free the gathered copies of the weights, so the next forward gathers the shards as they are now
        (the root group keeps its gathered weights after a forward without backward, e.g. an evaluation)."""
        if not self.sharded:
            return
        from torch.distributed.fsdp import FSDPModule

        for module in self.model.modules():
            if isinstance(module, FSDPModule):
                module.reshard()

    def file_name(self) -> str:
        return f"weight_average_rank_{self.process_index}.safetensors" if self.sharded else REPLICATED_FILE

    def save(self, checkpoint: Path) -> None:
        """Write this rank's average into ``checkpoint`` (under DDP only the main process writes: ranks agree)."""
        from safetensors.torch import save_file

        if self.sharded or self.is_main_process:
            path = Path(checkpoint) / self.file_name()
            save_file({name: tensor.contiguous() for name, tensor in self.average.items()}, str(path))
            fsync_path(path)

    def load(self, checkpoint: Path) -> bool:
        """Read the average saved in ``checkpoint``; False when it holds none (written without weight averaging)."""
        from safetensors.torch import load_file

        path = Path(checkpoint) / self.file_name()
        shards = sorted(Path(checkpoint).glob("weight_average_rank_*.safetensors"))
        if self.sharded and shards and len(shards) != torch.distributed.get_world_size():
            self.load_resharded(shards)  # written by another number of processes
            return True
        if not path.is_file():
            return False
        saved = load_file(str(path), device=str(next(iter(self.average.values())).device))
        mismatched = (sorted(set(saved) ^ set(self.average))
                      or [name for name in self.names if saved[name].shape != self.average[name].shape])
        if mismatched:
            raise ValueError(f"{path} does not fit this model (parameter {mismatched[0]}); resume with the model "
                             "and launch config that wrote it")
        for name in self.names:
            self.average[name].copy_(saved[name])
        return True


    @torch.no_grad()
    def load_resharded(self, shards: list[Path]) -> None:
        """The average of a sharded checkpoint written by another number of processes: each parameter's saved shards
        (dim 0, in rank order) joined into the whole and cut again the way FSDP2 cuts this run's parameter."""
        from safetensors.torch import load_file
        from torch.distributed.tensor import distribute_tensor

        parts = [load_file(str(path)) for path in sorted(shards, key=lambda path: int(path.stem.rsplit("_", 1)[1]))]
        parameters = dict(self.model.named_parameters())
        for name in self.names:
            whole = torch.cat([part[name] for part in parts]).to(self.average[name].device)
            parameter = parameters[name]
            self.average[name].copy_(distribute_tensor(whole, parameter.device_mesh, parameter.placements).to_local())


def start_weight_average(accelerator, model, decay: float, resume: Path | None) -> WeightAverage:
    """The run's weight average: the one saved in ``resume``, else a copy of the model's weights as they are now
    (the initial weights, or a checkpoint's that was written without weight averaging)."""
    if accelerator.distributed_type.name == "DEEPSPEED":
        raise TrainingError("training.ema_decay is not supported under DeepSpeed (its weights live in its optimizer); "
                            "use data parallel or FSDP (recipes/accelerate/), or drop training.ema_decay")
    average = WeightAverage(accelerator.unwrap_model(model), decay, accelerator.process_index,
                            accelerator.is_main_process)
    if resume is not None and not average.load(resume) and accelerator.is_main_process:
        logger.info(f"{resume} holds no weight average (written without training.ema_decay): the average starts "
                    "from its weights")
    return average
