"""pretrain(config): the one training loop, for any registered objective, on one CPU, one GPU or many.

    sslnlp pretrain recipes/tiny-cpu.yaml                                   # CPU, the quick start
    sslnlp pretrain recipes/bert-base.yaml output_dir=runs/bert            # one GPU
    accelerate launch --config_file recipes/accelerate/ddp-8gpu.yaml -m sslnlp pretrain recipes/bert-base.yaml

The story, in ``pretrain``: ``set_up`` (corpus, tokenizer, model(s), data stream, optimizer, resume) -> loop
(``train_step``; every N steps ``log_window`` / ``evaluate`` / callbacks / ``save``) -> ``finish`` (export, summary).
With weight averaging (training.ema_decay, sslnlp.training.averaging) the step also updates the average, and
evaluation, the probe and the export see the averaged weights (``Run.averaged_weights``).
The loop is the only place that knows the data stream, the objective, the model and the optimizer together;
everything specific to an objective is asked of it (sslnlp.objectives), and the periodic probe and Hub sync hang on
the loop as callbacks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from sslnlp.files import ensure_writable, find_latest_checkpoint
from sslnlp.training.averaging import WeightAverage, start_weight_average
from sslnlp.training.checkpoint import checkpoint_layout, load_checkpoint, read_loop_state, resolve_resume, save_checkpoint
from sslnlp.training.elastic import announce, current_layout, plan_resize
from sslnlp.training.warmups import block_length_at, micro_batches_at, steps_for_tokens
from sslnlp.config import PretrainConfig, to_dict
from sslnlp.console import Progress, run_log, set_up_console, without_tied_weight_warnings
from sslnlp.data.corpus import CorpusError
from sslnlp.publishing.hub import HubSync
from sslnlp.models.modeling import build_model_config, peak_flops_per_second
from sslnlp.objectives import Objective, build_objective
from sslnlp.data.blocks import BlockStream
from sslnlp.training.peers import PeerWatch
from sslnlp.training.provenance import check_resume, run_provenance
from sslnlp.data.sources import block_source, bundled_tokenizer, open_training_data
from sslnlp.runtime import (
    MetricsLog,
    PreemptionFlag,
    TrainingError,
    check_engine,
    check_launch,
    check_shared_output_dir,
    keep_freed_memory,
    learning_rate_multiplier,
    make_accelerator,
    parameter_groups,
    resolve_mixed_precision,
    use_deterministic_algorithms,
)
from sslnlp.data.tokenizer import load_tokenizer, train_tokenizer_into
from sslnlp.training.adaptation import extension_report, general_corpus, with_extended_vocabulary, with_task_texts

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------- pieces


def trains_tokenizer(config: PretrainConfig, output_dir: Path) -> bool:
    """True when this run trains its tokenizer: none configured, no checkpoint's, none saved by an earlier run."""
    return not (config.tokenizer.tokenizer_name_or_path or config.model.model_name_or_path
                or (output_dir / "tokenizer" / "tokenizer.json").is_file())


def check_one_shot(config: PretrainConfig, train_corpus, output_dir: Path, resume: Path | None) -> None:
    """A one-shot generator can be read once: refuse, before any work, a run that would need to read it again."""
    if train_corpus.reiterable:
        return
    data = config.data
    passes = {
        "to train the tokenizer (or give tokenizer.tokenizer_name_or_path)": trains_tokenizer(config, output_dir),
        "to learn the vocabulary extension (tokenizer.extend_vocabulary)": config.tokenizer.extend_vocabulary is not None,
        "for the validation hold-out (or give data.validation_files, or data.validation_holdout_every=0)":
            bool(data.validation_holdout_every and not data.validation_files),
        f"to resume from {resume}": resume is not None,
    }
    again = [why for why, needed in passes.items() if needed]
    if again:
        raise CorpusError(f"data.train_files is a one-shot generator, read once, but this run would read it again "
                          f"{'; '.join(again)}; pass a list, files, a dataset or a function returning a new generator "
                          "(lambda: (text for text in ...))")


def prepare_tokenizer(config: PretrainConfig, objective: Objective, corpus, accelerator, output_dir: Path):
    """Load the configured tokenizer, the one an earlier run saved in output_dir, or train one (main process)."""
    options = config.tokenizer
    if options.tokenizer_name_or_path:
        return load_tokenizer(options.tokenizer_name_or_path)
    if config.model.model_name_or_path:
        return load_tokenizer(config.model.model_name_or_path, trust_remote_code=config.model.trust_remote_code)
    if bundled_tokenizer(corpus):  # the tokenizer the blocks were made with
        return load_tokenizer(bundled_tokenizer(corpus))
    saved = output_dir / "tokenizer"
    if accelerator.is_main_process and trains_tokenizer(config, output_dir):
        train_tokenizer_into(corpus, saved, options, encoder=objective.encoder)
    accelerator.wait_for_everyone()
    return load_tokenizer(str(saved))


def evaluation_batches(config: PretrainConfig, objective: Objective, corpus, tokenizer, accelerator) -> list[dict]:
    """The held-out batches of this rank, collated once with the fixed evaluation seed (and masking rate), so that
    runs compare."""
    if corpus is None:
        return []
    dataset = block_source(corpus, config.data, objective.block_layout(tokenizer), tokenizer, repeat=False)
    collator = objective.build_collator(tokenizer, seed=config.evaluation.eval_seed, evaluation=config.evaluation)
    stream = BlockStream(dataset, config.evaluation.per_device_eval_batch_size, collator)
    batches, blocks = [], 0
    for batch in stream:  # every rank collates the same blocks identically, then keeps its share
        batches.append(batch)
        blocks += len(batch["input_ids"])
        if blocks >= config.evaluation.eval_blocks:
            break
    if not batches:
        raise ValueError(f"the validation corpus {getattr(corpus, 'name', corpus)} yields no text; is the corpus "
                         "empty? Otherwise point "
                         "data.validation_files at held-out text or raise data.validation_holdout_every's share")
    return batches[accelerator.process_index:: accelerator.num_processes]


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def weighted_loss(objective: Objective, sums: dict, counts: dict) -> float | None:
    """sum_k weight_k x sums_k / counts_k: the objective's loss per target (None when no term had a target)."""
    if not any(counts.get(term, 0) for term in sums):
        return None
    weights = objective.weights()
    return sum(weights[term] * (sums[term] / max(counts[term], 1)) for term in sums)


# ------------------------------------------------------------------------------------------------- the run


class Callback:
    """A hook of the training loop. The loop calls every callback, on every rank, at these points."""

    def on_step_end(self, run: Run, done: bool) -> None:
        """After an optimizer step, its logging and its evaluation; ``done``: the budget is spent."""

    def on_save(self, run: Run, checkpoint: Path, final: bool) -> None:
        """After a checkpoint was saved (all ranks); ``final``: the one at the end of the budget."""

    def on_end(self, run: Run, summary: dict) -> None:
        """After the export and summary.json; may add entries to ``summary``."""

    def on_stop(self, run: Run) -> None:
        """Stopped early by a signal, after its checkpoint."""


@dataclass
class Run:
    """Everything the loop works with, set up once by ``set_up``; ``loop`` is the state a checkpoint keeps."""

    config: PretrainConfig
    accelerator: object
    output_dir: Path
    objective: Objective
    tokenizer: object
    model_config: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    collator: object
    train_stream: BlockStream
    eval_batches: list
    general_batches: list
    metrics: MetricsLog
    budget_steps: int
    warmup: float
    peak_flops: float
    callbacks: list = field(default_factory=list)
    loop: dict = field(default_factory=lambda: {"step": 0, "tokens": 0, "elapsed": 0.0, "epoch_blocks": 0})
    window: dict = field(default_factory=dict)
    last_logged: dict | None = None
    last_eval: dict = field(default_factory=dict)
    consecutive_bad: int = 0
    average: WeightAverage | None = None  # training.ema_decay: the weights' moving average
    flops_at_length: dict = field(default_factory=dict)

    def averaged_weights(self):
        """A context in which the model holds the averaged weights (no change without weight averaging)."""
        return self.average.swapped_in() if self.average is not None else contextlib.nullcontext()

    def micro_batches(self) -> int:
        """Micro-batches of the step about to be taken (all of gradient_accumulation_steps, or the ramp's share)."""
        training = self.config.training
        return micro_batches_at(self.progress(), training.gradient_accumulation_steps, training.batch_size_warmup,
                                training.batch_size_warmup_start)

    def block_length(self) -> int:
        """Block length of the step about to be taken (data.max_seq_length, or the sequence-length warmup's)."""
        training = self.config.training
        return block_length_at(self.progress(), self.config.data.max_seq_length, self.train_stream.dataset.layout.specials,
                               training.sequence_length_warmup, training.sequence_length_warmup_start)

    def flops_per_token(self, length: int) -> float:
        """The model's FLOPs per token at a block length (the attention term grows with it)."""
        if length not in self.flops_at_length:
            self.flops_at_length[length] = self.objective.flops_per_token(self.model_config, length)
        return self.flops_at_length[length]

    def progress(self, next_step: bool = False) -> float:
        """Fraction of the budget used (``next_step``: as of the end of the step being taken, for its learning rate)."""
        fractions = []
        if self.budget_steps:
            fractions.append((self.loop["step"] + next_step) / self.budget_steps)
        if self.config.training.max_time:
            fractions.append(self.loop["elapsed"] / self.config.training.max_time)
        return max(fractions)


def set_up(config: PretrainConfig, accelerator) -> Run:
    """Accelerator, run directory, corpus, tokenizer, objective and model(s), data streams, optimizer; resumes
    from a checkpoint when asked. Seeds are set so the initial weights do not depend on tokenizer training."""
    from accelerate.utils import set_seed

    from sslnlp.training.engines import prepare_engine  # the engine's set-up before the optimizer (FSDP2, DeepSpeed)

    training = config.training
    output_dir = Path(config.output_dir)
    keep_freed_memory(accelerator.device)
    config_values = plain(to_dict(config))  # config.yaml and the config fingerprint
    if accelerator.is_main_process:
        ensure_writable(output_dir)
        (output_dir / "config.yaml").write_text(yaml.safe_dump(config_values, sort_keys=False))
    check_shared_output_dir(accelerator, output_dir)
    set_seed(training.seed)
    if training.deterministic:
        use_deterministic_algorithms()
    config = with_task_texts(config)
    data = config.data
    train_corpus, validation_corpus = open_training_data(data)
    resume = resolve_resume(training.resume_from_checkpoint, output_dir)
    check_one_shot(config, train_corpus, output_dir, resume)
    config = with_extended_vocabulary(config, accelerator, output_dir)
    objective = build_objective(config.objective, config.model, config.data)
    resize = None
    if resume is not None:  # on another number of processes or workers: the batch that keeps the global one
        config, resize = plan_resize(resume, read_loop_state(resume)["layout"], config, accelerator.num_processes,
                                     checkpoint_layout(resume), objective)
        training = config.training
    tokenizer = prepare_tokenizer(config, objective, train_corpus, accelerator, output_dir)
    model_config = build_model_config(config.model, tokenizer, data.max_seq_length)
    objective.check_model_config(model_config)
    set_seed(training.seed)  # the same initial weights whatever the tokenizer training consumed
    model = objective.build_model(model_config)
    collator = objective.build_collator(tokenizer, seed=training.seed + 1000 * accelerator.process_index)
    train_blocks = block_source(train_corpus, data, objective.block_layout(tokenizer), tokenizer,
                                 rank=accelerator.process_index, world_size=accelerator.num_processes,
                                 num_workers=data.num_workers,
                                 batch_size=training.per_device_train_batch_size)
    train_stream = BlockStream(train_blocks, training.per_device_train_batch_size, collator, num_workers=data.num_workers,
                               shuffle_buffer_size=data.shuffle_buffer_size, seed=data.seed)
    eval_batches = evaluation_batches(config, objective, validation_corpus, tokenizer, accelerator)
    general_batches = evaluation_batches(config, objective, general_corpus(config), tokenizer, accelerator)

    model = prepare_engine(accelerator, model, training)  # FSDP2: shard before the optimizer sees the parameters
    # Fused on CPUs too: the tiny model's optimizer step takes 5 ms instead of foreach's 15 ms.
    optimizer = torch.optim.AdamW(parameter_groups(model, training.weight_decay), lr=training.learning_rate,
                                  betas=(training.adam_beta1, training.adam_beta2), eps=training.adam_epsilon,
                                  fused=accelerator.device.type in ("cuda", "cpu") or None)
    # In place: torch.compile(model) wraps it, prefixing every weight's name with "_orig_mod." in the exported
    # model (which then loads as random weights), the checkpoints and the averaged weights.
    if training.torch_compile:
        model.compile()
    model, optimizer = accelerator.prepare(model, optimizer)

    tokens_per_step = (training.per_device_train_batch_size * training.gradient_accumulation_steps
                       * accelerator.num_processes * data.max_seq_length)
    budget_steps = training.max_steps or (steps_for_tokens(training.max_tokens, tokens_per_step,
                                                           training.gradient_accumulation_steps,
                                                           training.batch_size_warmup, training.batch_size_warmup_start)
                                          if training.max_tokens else 0)
    if training.sequence_length_warmup and not hasattr(train_blocks.layout, "cut"):
        raise TrainingError(f"training.sequence_length_warmup cuts packed blocks into shorter ones, but "
                            f"{config.objective.name} reads unpacked segments; drop the warmup")
    run = Run(config=config, accelerator=accelerator, output_dir=output_dir, objective=objective, tokenizer=tokenizer,
              model_config=model_config, model=model, optimizer=optimizer, collator=collator, train_stream=train_stream,
              eval_batches=eval_batches, general_batches=general_batches, metrics=MetricsLog(accelerator, output_dir / "metrics.jsonl", bool(training.report_to)),
              budget_steps=budget_steps,
              warmup=(training.warmup_steps / budget_steps if training.warmup_steps and budget_steps else training.warmup_ratio),
              peak_flops=peak_flops_per_second(accelerator.device, accelerator.mixed_precision, training.peak_flops))
    provenance = run_provenance(config_values, tokenizer, train_corpus)
    if resume is not None:
        run.loop, states = load_checkpoint(accelerator, resume, every_rank=resize is not None)
        check_resume(run.loop.get("provenance"), provenance, resume)
        restore_position(run, train_blocks, states, resize)
        say(run, f"resumed from {resume} at step {run.loop['step']}")
    run.loop["layout"] = current_layout(config, accelerator.num_processes)  # what a later resume compares with
    if training.ema_decay is not None:  # after the resume: a checkpoint without an average starts it from its weights
        run.average = start_weight_average(accelerator, model, training.ema_decay, resume)
    run.loop["provenance"] = provenance  # kept in every checkpoint: a resume compares against it
    if training.report_to:
        accelerator.init_trackers("sslnlp", config={k: v for k, v in flatten(to_dict(config)).items()
                                                    if isinstance(v, (int, float, str, bool))})
    return run


def restore_position(run: Run, train_blocks, states: list[dict], resize) -> None:
    """The data stream and masking generator where the checkpoint left them. On another layout (``resize``) the
    stream's position is what ``BlockSource.resume_state`` makes of every saved rank's; a rank new to the run keeps
    its fresh masking generator; the resize is announced and kept in the loop state (summary.json, the report)."""
    rank = run.accelerator.process_index
    if resize is None:
        own, data_state = states[0], states[0]["data"]
    else:
        own = states[rank] if rank < len(states) else None
        data_state, report = train_blocks.resume_state([state["data"] for state in states])
    run.train_stream.load_state_dict(data_state)
    if own is not None and own["collator"]:
        run.collator.load_state_dict({"generator": torch.tensor(own["collator"], dtype=torch.uint8)})
    if resize is not None:
        run.loop.setdefault("resizes", []).append(resize.as_record(run.loop["step"], report))
        say(run, announce(resize, run.loop["step"], report))


def train_step(run: Run, batches, preemption: PreemptionFlag) -> dict:
    """One optimizer step over gradient_accumulation_steps micro-batches; returns what the step measured."""
    accelerator, objective, training, model = run.accelerator, run.objective, run.config.training, run.model
    step_start = time.perf_counter()
    length = run.config.data.max_seq_length
    if training.sequence_length_warmup:  # the stream cuts the blocks of this step's micro-batches
        length = run.train_stream.block_length = run.block_length()
    micro_batches = [next(batches) for _ in range(run.micro_batches())]
    data_wait = time.perf_counter() - step_start
    micro_batches = [to_device(b, accelerator.device) for b in micro_batches]
    terms = list(objective.weights())
    local = [objective.count(b) for b in micro_batches]
    # One collective per step: the global count of each loss term's targets, and whether any rank was asked to stop.
    agreed = accelerator.reduce(torch.tensor([float(sum(c[t] for c in local)) for t in terms] + [float(preemption.raised)],
                                             device=accelerator.device), "sum")
    global_counts = dict(zip(terms, agreed[:-1]))
    # Normalise by the targets of the whole global batch, so every target weighs the same whatever the number of
    # processes or micro-batches (DDP averages gradients over ranks: hence x num_processes).
    scales = {t: accelerator.num_processes / global_counts[t].clamp(min=1) for t in terms}
    weights = objective.weights()
    step_sums = {t: torch.zeros((), device=accelerator.device) for t in terms}
    step_metrics: dict[str, list] = {}  # name -> [summed value, term]
    for index, batch in enumerate(micro_batches):
        sync = index == len(micro_batches) - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(model):
            output = objective.loss(model, batch, with_metrics=objective.train_metrics)
            total = sum(weights[t] * output.sums[t] * scales[t] for t in terms)
            accelerator.backward(total)
        for t in terms:
            step_sums[t] += output.sums[t].detach()
        for name, (value, term) in output.metrics.items():
            step_metrics.setdefault(name, [0, term])[0] += value.detach().double()
    # The gradient norm is the same on every rank after the all-reduce: all ranks skip (or not) together.
    gradient_norm = accelerator.clip_grad_norm_(model.parameters(), training.max_grad_norm or float("inf"))
    learning_rate = training.learning_rate * learning_rate_multiplier(
        run.progress(next_step=True), training.lr_scheduler_type, run.warmup, training.decay_ratio, training.min_lr_ratio)
    finite = bool(torch.isfinite(gradient_norm))
    if finite:
        for group in run.optimizer.param_groups:
            group["lr"] = learning_rate
        run.optimizer.step()
        if run.average is not None:  # a step that starts before training.ema_start copies the weights
            run.average.update(copy=run.progress() < training.ema_start)
        run.consecutive_bad = 0
    else:
        skip_nonfinite_step(run)
    run.optimizer.zero_grad(set_to_none=True)
    step_tokens = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel()
                      for b in micro_batches)
    if accelerator.device.type == "cuda":  # the step's kernels, not just their launches (a sync follows anyway)
        torch.cuda.synchronize(accelerator.device)
    return {"seconds": time.perf_counter() - step_start, "data_wait": data_wait, "finite": finite, "sums": step_sums,
            "metrics": step_metrics,
            "counts": {t: int(global_counts[t].item()) for t in terms}, "tokens": step_tokens * accelerator.num_processes,
            "flops": step_tokens * accelerator.num_processes * run.flops_per_token(length),
            "micro_batches": len(micro_batches), "block_length": length,
            "learning_rate": learning_rate, "preempted": bool(agreed[-1].item())}


def skip_nonfinite_step(run: Run) -> None:
    """Count a step whose loss or gradient was not finite (its update is skipped); stop after too many in a row."""
    loop, training = run.loop, run.config.training
    loop["nonfinite_steps"] = loop.get("nonfinite_steps", 0) + 1
    run.consecutive_bad += 1
    if run.accelerator.is_main_process:
        logger.warning(f"step {loop['step'] + 1}: non-finite loss or gradient, step skipped "
                       f"({loop['nonfinite_steps']} so far, {run.consecutive_bad} in a row)")
    if run.consecutive_bad >= training.max_consecutive_nonfinite_steps:
        raise TrainingError(f"{run.consecutive_bad} consecutive steps had a non-finite loss or gradient (step "
                            f"{loop['step'] + 1}); lower training.learning_rate or use bf16 instead of fp16; "
                            f"the last good checkpoint is {find_latest_checkpoint(run.output_dir) or 'none'}")


def advance(run: Run, step: dict) -> None:
    """Account a finished step in the loop state (all ranks agree on the clock) and the logging window."""
    from accelerate.utils import broadcast

    loop, window, accelerator = run.loop, run.window, run.accelerator
    loop["step"] += 1
    loop["tokens"] += step["tokens"]
    loop["flops"] = loop.get("flops", 0.0) + step["flops"]
    # device-seconds: the MFU of a run resumed on another number of processes counts each part on its devices
    loop["device_seconds"] = loop.get("device_seconds", 0.0) + step["seconds"] * run.accelerator.num_processes
    if run.config.training.max_time:  # every rank uses rank 0's clock, so all stop (and schedule) together
        elapsed = broadcast(torch.tensor([loop["elapsed"] + step["seconds"]], dtype=torch.float64, device=accelerator.device))
        loop["elapsed"] = float(elapsed.item())
    else:
        loop["elapsed"] += step["seconds"]
    if step["finite"]:
        sums, counts, metrics = (window.setdefault(key, {}) for key in ("sums", "counts", "metrics"))
        for term, value in step["sums"].items():
            sums[term] = sums.get(term, 0) + value
            counts[term] = counts.get(term, 0) + step["counts"][term]
        for name, (value, term) in step["metrics"].items():
            metrics.setdefault(name, [0, term])[0] += value
    for key, value in (("steps", 1), ("tokens", step["tokens"]), ("seconds", step["seconds"]), ("wait", step["data_wait"]),
                       ("flops", step["flops"])):
        window[key] = window.get(key, 0) + value
    window["micro_batches"], window["block_length"] = step["micro_batches"], step["block_length"]


def log_window(run: Run, learning_rate: float, progress_bar) -> None:
    """Write the logging window's record (loss per target, throughput, MFU, data wait) and start a new window."""
    window, accelerator, objective = run.window, run.accelerator, run.objective
    terms = list(objective.weights())
    pending = window.get("sums", {})
    sums = accelerator.reduce(torch.stack([pending.get(t, torch.zeros((), device=accelerator.device)) for t in terms]), "sum").tolist()
    sums, counts = dict(zip(terms, sums)), {t: window.get("counts", {}).get(t, 0) for t in terms}
    seconds = max(window.get("seconds", 0.0), 1e-9)
    tokens_per_second = window.get("tokens", 0) / seconds
    record = {"step": run.loop["step"], "loss": weighted_loss(objective, sums, counts), "learning_rate": learning_rate,
              "tokens": run.loop["tokens"], "tokens_per_second": tokens_per_second,
              # per device: the window's FLOPs (at each step's block length) over its seconds and the processes
              "model_flops_utilization": (window.get("flops", 0.0) / seconds / accelerator.num_processes / run.peak_flops
                                          if run.peak_flops else None),
              "data_wait_fraction": window.get("wait", 0.0) / seconds, "elapsed": run.loop["elapsed"],
              "nonfinite_steps": run.loop.get("nonfinite_steps", 0)}
    training = run.config.training
    if training.batch_size_warmup:  # the last step's size, on the ramp's schedule
        record["micro_batches"] = window.get("micro_batches")
    if training.sequence_length_warmup:
        record["block_length"] = window.get("block_length")
    if len(terms) > 1:
        record.update({f"{t}_loss": sums[t] / counts[t] if counts[t] else None for t in terms})
    pending_metrics = window.get("metrics", {})
    if pending_metrics:
        names = sorted(pending_metrics)
        values = accelerator.reduce(torch.stack([torch.as_tensor(pending_metrics[n][0], dtype=torch.float64,
                                                                 device=accelerator.device) for n in names]), "sum")
        record.update({n: v / counts[pending_metrics[n][1]] if counts[pending_metrics[n][1]] else None
                       for n, v in zip(names, values.tolist())})
    run.metrics.write(record)
    run.last_logged = record
    progress_bar.set_postfix(loss=f"{record['loss']:.3f}" if record["loss"] is not None else "nan",
                             lr=f"{learning_rate:.2e}", tok_s=f"{tokens_per_second:,.0f}")
    run.window = {}


@torch.no_grad()
def evaluate(run: Run, batches: list | None = None) -> dict:
    """The objective's loss per target on the held-out batches (fixed masks), with its metrics and perplexity;
    ``batches``: other held-out batches than the validation text's (the general domain's)."""
    model, objective, accelerator = run.model, run.objective, run.accelerator
    terms = list(objective.weights())
    model.eval()
    totals: dict[str, torch.Tensor] = {}
    # Objectives that draw at evaluation (ELECTRA's replacements) draw from the fixed evaluation seed, so runs
    # compare, and the training's random state is left as it was, so a resumed run draws what the original did.
    with torch.random.fork_rng(devices=[accelerator.device] if accelerator.device.type == "cuda" else []):
        torch.manual_seed(run.config.evaluation.eval_seed + accelerator.process_index)
        for batch in run.eval_batches if batches is None else batches:
            batch = to_device(batch, accelerator.device)
            output = objective.loss(model, batch, with_metrics=True)
            for term, count in objective.count(batch).items():
                totals[f"count/{term}"] = totals.get(f"count/{term}", 0) + torch.tensor(
                    float(count), dtype=torch.float64, device=accelerator.device)
            for term, value in output.sums.items():
                totals[f"sum/{term}"] = totals.get(f"sum/{term}", 0) + value.double()
            for name, (value, term) in output.metrics.items():
                totals[f"metric/{name}/{term}"] = totals.get(f"metric/{name}/{term}", 0) + value.double()
    keys = sorted(totals)
    reduced = dict(zip(keys, accelerator.reduce(torch.stack([totals[k] for k in keys]), "sum").tolist()))
    model.train()
    counts = {t: reduced.get(f"count/{t}", 0.0) for t in terms}
    loss = weighted_loss(objective, {t: reduced.get(f"sum/{t}", 0.0) for t in terms}, counts) or 0.0
    result = {"eval_loss": loss}
    if objective.reports_perplexity:
        result["eval_perplexity"] = math.exp(min(loss, 50))
    if len(terms) > 1:
        result.update({f"eval_{t}_loss": reduced.get(f"sum/{t}", 0.0) / max(counts[t], 1) for t in terms})
    for key, value in reduced.items():
        if key.startswith("metric/"):
            _, name, term = key.split("/")
            result[f"eval_{name}"] = value / max(counts[term], 1)
    result["eval_targets"] = int(counts[terms[0]])
    return result


def save(run: Run) -> None:
    """A checkpoint of every rank's state (model(s), optimizer, RNGs, data position, collator, weight average),
    then callbacks."""
    rank_state = {"data": run.train_stream.state_dict(),
                  "collator": run.collator.state_dict().get("generator", torch.zeros(0)).tolist()}
    try:
        with without_tied_weight_warnings():
            checkpoint = save_checkpoint(run.accelerator, run.output_dir, run.loop["step"], dict(run.loop), rank_state,
                                         run.config.training.save_total_limit,
                                         write_extra=run.average.save if run.average is not None else None)
    except OSError as error:
        previous = find_latest_checkpoint(run.output_dir)
        raise TrainingError(f"cannot write the checkpoint of step {run.loop['step']} under {run.output_dir}/checkpoints "
                            f"({error.strerror or error}); free space or fix permissions, then resume: the previous "
                            f"checkpoint {previous or '(none)'} is intact") from None
    for callback in run.callbacks:
        callback.on_save(run, checkpoint, final=run.progress() >= 1.0)


def finish(run: Run) -> dict:
    """Export the model(s), write summary.json, let the callbacks finish (the Hub push); return the summary."""
    accelerator, loop = run.accelerator, run.loop
    run.objective.close()
    export(run, run.output_dir)
    if run.config.training.report_to:
        accelerator.end_training()
    tokens_per_second = loop["tokens"] / max(loop["elapsed"], 1e-9)
    summary = {"steps": loop["step"], "tokens": loop["tokens"], "epochs": run.train_stream.epochs,
               "train_runtime": loop["elapsed"],
               "train_loss": run.last_logged["loss"] if run.last_logged else None,
               "tokens_per_second": tokens_per_second,
               "model_flops_per_token": run.flops_per_token(run.config.data.max_seq_length),
               "world_size": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
               "nonfinite_steps": loop.get("nonfinite_steps", 0), "ema_decay": run.config.training.ema_decay,
               "model_flops_utilization": (loop.get("flops", 0.0) / max(loop.get("device_seconds", 0.0), 1e-9)
                                           / run.peak_flops) if run.peak_flops else None,
               # the ceiling that MFU divides by (on CPUs measured at the start of this process): a slow measurement
               # overstates MFU, so it is kept beside it
               "peak_flops_per_second": run.peak_flops or None,
               "output_dir": str(run.output_dir), **{k: v for k, v in run.last_eval.items() if k != "step"},
               "provenance": loop["provenance"], **adaptation_summary(run),
               **({"resizes": loop["resizes"]} if loop.get("resizes") else {})}
    if accelerator.is_main_process:
        (run.output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    for callback in run.callbacks:  # after the last collective: only rank 0 waits on the network
        callback.on_end(run, summary)
    say(run, finished_line(summary))
    return summary


def export(run: Run, output_dir) -> None:
    """Write the model(s) the run publishes into ``output_dir`` (every rank): the averaged weights with
    training.ema_decay, which probing, fine-tuning and the Hub push then read."""
    with run.averaged_weights():
        run.objective.export(run.accelerator, run.model, run.tokenizer, output_dir)


def evaluate_model(run: Run) -> dict:
    """``evaluate`` of the model the run publishes: with weight averaging the averaged weights' metrics, and the
    training weights' loss as ``raw_eval_loss``."""
    if run.average is None:
        return evaluate(run)
    with run.averaged_weights():
        result = evaluate(run)
    return {**result, "raw_eval_loss": evaluate(run)["eval_loss"]}


def adaptation_summary(run: Run) -> dict:
    """What a continued pretraining measured: the held-out losses before the first step (``*_before``), the
    general-domain loss after and its change (forgetting), the vocabulary extension."""
    start = run.loop.get("start_eval") or {}
    summary = {f"{key}_before": start[key] for key in ("eval_loss", "general_eval_loss") if key in start}
    if "general_eval_loss" in run.last_eval:
        summary["general_eval_loss"] = run.last_eval["general_eval_loss"]
        if "general_eval_loss" in start:
            summary["general_eval_loss_change"] = run.last_eval["general_eval_loss"] - start["general_eval_loss"]
    extension = extension_report(run.output_dir)
    if extension:
        summary["vocabulary_extension"] = extension
    return summary


def evaluate_start(run: Run) -> None:
    """Before the first step of a continuation: the checkpoint's own held-out losses (validation and general
    text), written as step 0 of metrics.jsonl and kept in the loop state for the summary."""
    record = evaluate(run) if run.eval_batches else {}
    if run.general_batches:
        record["general_eval_loss"] = evaluate(run, run.general_batches)["eval_loss"]
    if not record:
        return
    run.loop["start_eval"] = record
    run.metrics.write({"step": 0, **record, "tokens": 0, "elapsed": 0.0})
    say(run, "step 0 (the checkpoint as loaded): " + ", ".join(f"{k}={v:.4g}" for k, v in record.items()))


def finished_line(summary: dict) -> str:
    """The run's result in one line (summary.json has everything)."""
    parts = [f"done: {summary['steps']:,} steps, {summary['tokens']:,} tokens in {summary['train_runtime'] / 60:.1f} min "
             f"({summary['tokens_per_second']:,.0f} tokens/s"
             + (f", MFU {100 * summary['model_flops_utilization']:.1f}%)" if summary.get("model_flops_utilization") else ")")]
    if summary.get("eval_loss") is not None:
        parts.append(f"held-out loss {summary['eval_loss']:.4f}" + (
            f" (averaged weights; training weights {summary['raw_eval_loss']:.4f})"
            if summary.get("raw_eval_loss") is not None else ""))
    parts.append(f"model and summary.json in {summary['output_dir']}")
    return "; ".join(parts)


def stop_early(run: Run) -> dict:
    """Stopped by SIGTERM / SIGINT: the checkpoint is saved; say how to resume."""
    if run.accelerator.is_main_process:
        logger.warning(f"stopped by a signal at step {run.loop['step']}; the checkpoint is saved. Resume with: "
                       f"sslnlp pretrain <recipe> output_dir={run.output_dir} training.resume_from_checkpoint=auto")
    for callback in run.callbacks:
        callback.on_stop(run)
    return {"steps": run.loop["step"], "tokens": run.loop["tokens"], "preempted": True, "output_dir": str(run.output_dir)}


def progress_bar(run: Run) -> Progress:
    """Steps, or seconds for a wall-clock budget (so the ETA is right)."""
    return Progress(total=run.budget_steps or run.config.training.max_time,
                    initial=run.loop["step"] if run.budget_steps else run.loop["elapsed"],
                    unit="step" if run.budget_steps else "s", main_process=run.accelerator.is_main_process)


def say(run: Run, text: str) -> None:
    """One line on the console (and in train.log), from the main process."""
    if run.accelerator.is_main_process:
        logger.info(text)


# ------------------------------------------------------------------------------------------------ callbacks


class ProbeCallback(Callback):
    """A linear probe of the model as it trains (evaluation.probe_task, every evaluation.probe_steps and at the end):
    representation quality next to the loss in metrics.jsonl. The task loads (and is checked) before training."""

    def __init__(self, config: PretrainConfig):
        from sslnlp.config import TaskConfig, build
        from sslnlp.evaluation.tasks import load_task

        evaluation = config.evaluation
        if evaluation.probe_pooling not in ("mean", "first"):
            raise ValueError(f"evaluation.probe_pooling={evaluation.probe_pooling!r}; choose one of mean, first")
        self.evaluation = evaluation
        self.task = load_task(build(TaskConfig, evaluation.probe_task, "evaluation.probe_task."))

    def on_step_end(self, run: Run, done: bool) -> None:
        from sslnlp.config import ProbeOptions
        from sslnlp.evaluation.probing import probe_model

        step, every = run.loop["step"], self.evaluation.probe_steps
        if not ((every and step % every == 0) or done):
            return
        accelerator = run.accelerator
        with run.averaged_weights():  # the model the run publishes
            result = probe_model(run.objective.representation_model(accelerator.unwrap_model(run.model)),
                                 run.tokenizer, self.task, ProbeOptions(pooling=self.evaluation.probe_pooling),
                                 max_seq_length=run.config.data.max_seq_length, accelerator=accelerator)
        metric, score = result["metric"], result["test"][result["metric"]]  # "test": the task's reported split
        run.metrics.write({"step": step, "tokens": run.loop["tokens"], "elapsed": run.loop["elapsed"], "probe_task": self.task.name, "probe_metric": metric, "probe_split": result["split"],
                           f"probe_{metric}": score, "probe_seconds": result["seconds"]})
        say(run, f"step {step}: probe {self.task.name} ({result['split']}) {metric}={score:.4f}")


class HubCallback(Callback):
    """Hub sync (hub.push_to_hub): pushes from rank 0's background thread, never stalling the other ranks."""

    def __init__(self, run_hub: HubSync):
        self.hub = run_hub

    def on_save(self, run: Run, checkpoint: Path, final: bool) -> None:
        self.hub.checkpoint_saved(lambda folder: export(run, folder), checkpoint, final=final)

    def on_end(self, run: Run, summary: dict) -> None:
        pushes = self.hub.finish(summary)
        if pushes:
            summary["hub_pushes"] = pushes

    def on_stop(self, run: Run) -> None:
        self.hub.wait()


# --------------------------------------------------------------------------------------------------- loop


def pretrain(config: PretrainConfig) -> dict:
    """Pretrain a transformers model with the configured objective on a corpus; return a summary of the run.

    Args:
        config: the run's PretrainConfig (see ``sslnlp pretrain --help`` for every field).

    Returns:
        dict with steps, tokens, train_loss (mean of the last logging window), evaluation metrics, runtime,
        tokens_per_second and output_dir. The final model and tokenizer are in ``config.output_dir``.
    """
    config.check()
    set_up_console()
    check_launch()  # before run_log or set_up write anything
    accelerator = make_accelerator(mixed_precision=resolve_mixed_precision(config.training.mixed_precision),
                                   log_with=config.training.report_to or None, project_dir=str(config.output_dir))
    check_engine(accelerator)
    with PeerWatch(config.training.peer_timeout) as peers, \
            run_log(config.output_dir, main_process=accelerator.is_main_process):
        try:
            return train_run(config, accelerator)
        except RuntimeError as error:  # gloo / NCCL errors of a failed collective (DistBackendError among them)
            lost = None if isinstance(error, TrainingError) else peers.diagnose()
            if lost is None:
                raise
            text = str(error).strip().splitlines()[0][-160:] if str(error).strip() else type(error).__name__
            raise TrainingError(f"rank {peers.rank} ({peers.me}): a collective failed ({text}); lost {lost}; restart "
                                "every launch with training.resume_from_checkpoint=auto") from error


def train_run(config: PretrainConfig, accelerator) -> dict:
    """pretrain's loop (the run log attached)."""
    run = set_up(config, accelerator)
    run.callbacks = [ProbeCallback(config)] if config.evaluation.probe_task else []
    if config.hub.push_to_hub:  # no-op otherwise; pushes from rank 0's thread
        run.callbacks.append(HubCallback(HubSync(config.hub, run.accelerator, run.output_dir)))
    evaluation, training = config.evaluation, config.training
    batches = iter(run.train_stream)
    if run.loop["step"] == 0 and (config.model.model_name_or_path or run.general_batches):
        evaluate_start(run)
    run.model.train()
    preempted = False
    with PreemptionFlag() as preemption, progress_bar(run) as bar:
        while run.progress() < 1.0 and not preempted:
            step = train_step(run, batches, preemption)
            advance(run, step)
            bar.update(round(step["seconds"], 3) if not run.budget_steps else 1)
            done = run.progress() >= 1.0
            if run.loop["step"] % training.logging_steps == 0 or done:
                log_window(run, step["learning_rate"], bar)
            if run.eval_batches and ((evaluation.eval_steps and run.loop["step"] % evaluation.eval_steps == 0) or done):
                run.last_eval = {"step": run.loop["step"], **evaluate_model(run)}
                run.metrics.write({**run.last_eval, "tokens": run.loop["tokens"], "elapsed": run.loop["elapsed"]})
                say(run, f"step {run.loop['step']}: " + ", ".join(
                    f"{k}={v:.4g}" for k, v in run.last_eval.items() if k != "step"))
            if done and run.general_batches:
                with run.averaged_weights():  # the published model's; the training weights' is not reported here
                    general = {"general_eval_loss": evaluate(run, run.general_batches)["eval_loss"]}
                run.last_eval = {**run.last_eval, **general}
                run.metrics.write({"step": run.loop["step"], **general, "tokens": run.loop["tokens"],
                                   "elapsed": run.loop["elapsed"]})
                say(run, f"step {run.loop['step']}: general_eval_loss={general['general_eval_loss']:.4g}")
            for callback in run.callbacks:
                callback.on_step_end(run, done)
            preempted = step["preempted"]
            if (training.save_steps and run.loop["step"] % training.save_steps == 0) or done or preempted:
                save(run)
    return stop_early(run) if preempted else finish(run)


def flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def plain(value):
    """Config values as YAML-safe data (a corpus given as a Python object is recorded by its type name)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value] if len(value) <= 64 else f"<{len(value)} items>"
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return f"<{type(value).__name__}>"
