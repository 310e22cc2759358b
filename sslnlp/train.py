"""pretrain(config): the one training loop (masked-LM or next-token), on one CPU, one GPU or many.

    sslnlp pretrain recipes/tiny-cpu.yaml                                   # CPU, the quick start
    sslnlp pretrain recipes/bert-base.yaml output_dir=runs/bert            # one GPU
    accelerate launch --config_file recipes/accelerate/ddp-8gpu.yaml -m sslnlp pretrain recipes/bert-base.yaml

Setup -> accelerator.prepare -> loop (step; every N steps log / evaluate / save) -> export. The loop is the only
place that knows the data stream, the collator, the model and the optimizer together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path

import torch
import yaml

from sslnlp.checkpoint import export_model, find_latest_checkpoint, load_checkpoint, resolve_resume, save_checkpoint
from sslnlp.config import PretrainConfig, to_dict
from sslnlp.corpus import HoldoutCorpus, ShuffledCorpus, load_corpus
from sslnlp.hub import HubSync
from sslnlp.masking import build_collator
from sslnlp.modeling import (
    SparseMaskedLMHead,
    build_model,
    build_model_config,
    count_targets,
    dense_loss,
    flops_per_token,
    peak_flops_per_second,
)
from sslnlp.packing import BlockStream, PackedBlocks
from sslnlp.runtime import (
    MetricsLog,
    PreemptionFlag,
    TrainingError,
    ensure_writable,
    keep_freed_memory,
    learning_rate_multiplier,
    make_accelerator,
    parameter_groups,
    resolve_mixed_precision,
)
from sslnlp.tokenizer import load_tokenizer, train_tokenizer

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------- pieces


def build_corpus(data, files, split: str):
    """The corpus for ``files`` (train_files or validation_files) with the data section's reading options."""
    options = dict(text_field=data.text_field, document_separator=data.document_separator,
                   on_bad_record=data.on_bad_record, max_document_bytes=data.max_document_bytes,
                   dataset_config_name=data.dataset_config_name, split=split, seed=data.seed,
                   shuffle_documents=data.shuffle_documents)
    if isinstance(files, list) and data.mixture_weights:
        return load_corpus(list(zip(files, data.mixture_weights)), **options)
    return load_corpus(files, **options)  # a list of file names or globs reads files; other lists are documents


def training_and_validation_corpora(data):
    if data.validation_holdout_every and not data.validation_files:  # hold out from the stored order, then shuffle
        stored = build_corpus(dataclasses.replace(data, shuffle_documents=False), data.train_files, data.dataset_split)
        train = HoldoutCorpus(stored, data.validation_holdout_every, held_out=False)
        validation = HoldoutCorpus(stored, data.validation_holdout_every, held_out=True)
        return (ShuffledCorpus(train, seed=data.seed) if data.shuffle_documents else train), validation
    train = build_corpus(data, data.train_files, data.dataset_split)
    validation = None
    if data.validation_files:  # never mixed nor shuffled: the weights and the shuffle belong to train_files
        validation = build_corpus(dataclasses.replace(data, mixture_weights=[], shuffle_documents=False),
                                  data.validation_files, "validation")
    return train, validation


def prepare_tokenizer(config: PretrainConfig, corpus, accelerator, output_dir: Path):
    """Load the configured tokenizer, the one an earlier run saved in output_dir, or train one (main process)."""
    options = config.tokenizer
    if options.tokenizer_name_or_path:
        return load_tokenizer(options.tokenizer_name_or_path)
    if config.model.model_name_or_path:
        return load_tokenizer(config.model.model_name_or_path, trust_remote_code=config.model.trust_remote_code)
    saved = output_dir / "tokenizer"
    if accelerator.is_main_process and not (saved / "tokenizer.json").is_file():
        logger.info("training a %s tokenizer (vocabulary %d) on up to %d documents", options.kind, options.vocab_size,
                    options.training_documents)
        train_tokenizer(corpus, saved, kind=options.kind, objective=config.masking.objective,
                        vocab_size=options.vocab_size, min_frequency=options.min_frequency,
                        max_documents=options.training_documents, lowercase=options.lowercase)
    accelerator.wait_for_everyone()
    return load_tokenizer(str(saved))


def evaluation_batches(config: PretrainConfig, corpus, tokenizer, accelerator) -> list[dict]:
    """The held-out batches of this rank, masked once with the fixed evaluation seed and rate (comparable runs)."""
    if corpus is None:
        return []
    objective = config.masking.objective
    dataset = PackedBlocks(corpus, tokenizer, config.data.max_seq_length, objective=objective, repeat=False,
                           documents_per_batch=config.data.documents_per_batch)
    masking = {"mlm_probability": config.evaluation.eval_mlm_probability}
    collator = build_collator(tokenizer, objective, masking if objective == "mlm" else None, seed=config.evaluation.eval_seed)
    stream = BlockStream(dataset, config.evaluation.per_device_eval_batch_size, collator)
    batches, blocks = [], 0
    for batch in stream:  # every rank masks the same blocks identically, then keeps its share
        batches.append(batch)
        blocks += len(batch["input_ids"])
        if blocks >= config.evaluation.eval_blocks:
            break
    if not batches:
        raise ValueError(f"the validation corpus {corpus.name} yields no text; is the corpus empty? Otherwise point "
                         "data.validation_files at held-out text or raise data.validation_holdout_every's share")
    return batches[accelerator.process_index:: accelerator.num_processes]


@torch.no_grad()
def evaluate(model, batches: list[dict], loss_function, accelerator) -> dict:
    """Loss per target, perplexity and target accuracy over the held-out batches, without keeping logits around."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # loss sum, targets, correct
    for batch in batches:
        batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
        loss_sum, logits, targets = loss_function(model, batch)
        totals += torch.stack([loss_sum.double(), torch.tensor(float(len(targets)), device=totals.device, dtype=torch.float64),
                               (logits.argmax(-1) == targets).sum().double()])
    totals = accelerator.reduce(totals, "sum")
    model.train()
    loss = (totals[0] / totals[1].clamp(min=1)).item()
    return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50)), "eval_accuracy": (totals[2] / totals[1].clamp(min=1)).item(),
            "eval_targets": int(totals[1].item())}


def load_probe_task(evaluation):
    """The labelled task probed during pretraining, loaded (and checked) before training starts; None without one."""
    if not evaluation.probe_task:
        return None
    from sslnlp.config import TaskConfig, build
    from sslnlp.tasks import load_task

    if evaluation.probe_pooling not in ("mean", "first"):
        raise ValueError(f"evaluation.probe_pooling={evaluation.probe_pooling!r}; choose one of mean, first")
    return load_task(build(TaskConfig, evaluation.probe_task, "evaluation.probe_task."))


def run_probe(model, tokenizer, task, config: PretrainConfig, accelerator, step: int) -> dict:
    """A linear probe of the model as it is now: representation quality next to the loss in metrics.jsonl."""
    from sslnlp.config import ProbeOptions
    from sslnlp.evaluate import probe_model

    result = probe_model(accelerator.unwrap_model(model), tokenizer, task, ProbeOptions(pooling=config.evaluation.probe_pooling),
                         max_seq_length=config.data.max_seq_length, accelerator=accelerator)
    metric, score = result["metric"], result["test"][result["metric"]]  # "test": the task's reported split
    record = {"step": step, "probe_task": task.name, "probe_metric": metric, "probe_split": result["split"],
              f"probe_{metric}": score, "probe_seconds": result["seconds"]}
    accelerator.print(f"step {step}: probe {task.name} ({result['split']}) {metric}={score:.4f}")
    return record


# --------------------------------------------------------------------------------------------------------- loop


def pretrain(config: PretrainConfig) -> dict:
    """Pretrain a masked-LM or causal-LM transformers model on a corpus; return a summary of the run.

    Args:
        config: the run's PretrainConfig (see ``sslnlp pretrain --help`` for every field).

    Returns:
        dict with steps, tokens, train_loss (mean of the last logging window), evaluation metrics, runtime,
        tokens_per_second and output_dir. The final model and tokenizer are in ``config.output_dir``.
    """
    from accelerate.utils import broadcast, set_seed

    config.check()
    training, objective = config.training, config.masking.objective
    output_dir = Path(config.output_dir)
    accelerator = make_accelerator(mixed_precision=resolve_mixed_precision(training.mixed_precision),
                                   log_with=training.report_to or None, project_dir=str(output_dir))
    keep_freed_memory(accelerator.device)
    if accelerator.is_main_process:
        ensure_writable(output_dir)
        (output_dir / "config.yaml").write_text(yaml.safe_dump(_plain(to_dict(config)), sort_keys=False))
    hub = HubSync(config.hub, accelerator, output_dir)  # no-op unless hub.push_to_hub; pushes from rank 0's thread
    set_seed(training.seed)

    train_corpus, validation_corpus = training_and_validation_corpora(config.data)
    tokenizer = prepare_tokenizer(config, train_corpus, accelerator, output_dir)
    model_config = build_model_config(config.model, tokenizer, objective, config.data.max_seq_length)
    set_seed(training.seed)  # the same initial weights whatever the tokenizer training consumed
    model = build_model(config.model, model_config, objective)
    sparse_head = SparseMaskedLMHead(model) if objective == "mlm" and config.model.sparse_prediction else None

    def loss_function(model, batch):
        if sparse_head is not None:
            return sparse_head.forward(model, batch)
        return dense_loss(model, batch, objective)

    masking = {key: getattr(config.masking, key) for key in ("mlm_probability", "mask_replace_probability",
               "random_replace_probability", "masking", "fixed_mask_count", "mean_span_length", "max_span_length")}
    collator = build_collator(tokenizer, objective, masking if objective == "mlm" else None,
                              seed=training.seed + 1000 * accelerator.process_index)
    data = config.data
    train_blocks = PackedBlocks(train_corpus, tokenizer, data.max_seq_length, objective=objective,
                                with_word_starts=objective == "mlm" and config.masking.masking != "token",
                                rank=accelerator.process_index, world_size=accelerator.num_processes,
                                num_workers=data.num_workers, documents_per_batch=data.documents_per_batch)
    train_stream = BlockStream(train_blocks, training.per_device_train_batch_size, collator, num_workers=data.num_workers,
                               shuffle_buffer_size=data.shuffle_buffer_size, seed=data.seed)
    eval_batches = evaluation_batches(config, validation_corpus, tokenizer, accelerator)
    probe_task = load_probe_task(config.evaluation)

    # Fused on CPUs too: the tiny model's optimizer step takes 5 ms instead of foreach's 15 ms.
    optimizer = torch.optim.AdamW(parameter_groups(model, training.weight_decay), lr=training.learning_rate,
                                  betas=(training.adam_beta1, training.adam_beta2), eps=training.adam_epsilon,
                                  fused=accelerator.device.type in ("cuda", "cpu") or None)
    if training.torch_compile:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)

    loop = {"step": 0, "tokens": 0, "elapsed": 0.0, "epoch_blocks": 0}
    resume = resolve_resume(training.resume_from_checkpoint, output_dir)
    if resume is not None:
        loop, rank_state = load_checkpoint(accelerator, resume)
        train_stream.load_state_dict(rank_state["data"])
        collator.load_state_dict({"generator": torch.tensor(rank_state["collator"], dtype=torch.uint8)} if rank_state["collator"] else {})
        accelerator.print(f"resumed from {resume} at step {loop['step']}")

    tokens_per_step = (training.per_device_train_batch_size * training.gradient_accumulation_steps
                       * accelerator.num_processes * data.max_seq_length)
    budget_steps = training.max_steps or (math.ceil(training.max_tokens / tokens_per_step) if training.max_tokens else 0)
    warmup = (training.warmup_steps / budget_steps if training.warmup_steps and budget_steps else training.warmup_ratio)
    predicted_fraction = config.masking.mlm_probability if sparse_head is not None else 1.0
    model_flops_per_token = flops_per_token(model_config, data.max_seq_length, predicted_fraction)

    metrics = MetricsLog(accelerator, output_dir / "metrics.jsonl", bool(training.report_to))
    if training.report_to:
        accelerator.init_trackers("sslnlp", config={k: v for k, v in _flatten(to_dict(config)).items()
                                                    if isinstance(v, (int, float, str, bool))})
    from tqdm.auto import tqdm

    time_bar = not budget_steps  # a wall-clock budget: the bar counts seconds, so its ETA is right
    peak_flops = peak_flops_per_second(accelerator.device, accelerator.mixed_precision, training.peak_flops)
    progress = tqdm(total=budget_steps or training.max_time, initial=loop["step"] if budget_steps else loop["elapsed"],
                    unit="step" if budget_steps else "s", disable=not accelerator.is_local_main_process or os.environ.get("TQDM_DISABLE") == "1",
                    desc="pretrain", dynamic_ncols=True)

    def progress_of_budget(next_step: bool = False) -> float:
        """Fraction of the budget used (``next_step``: as of the end of the step being taken, for its learning rate)."""
        fractions = []
        if budget_steps:
            fractions.append((loop["step"] + next_step) / budget_steps)
        if training.max_time:
            fractions.append(loop["elapsed"] / training.max_time)
        return max(fractions)

    def save():
        rank_state = {"data": train_stream.state_dict(),
                      "collator": collator.state_dict().get("generator", torch.zeros(0)).tolist()}
        try:
            checkpoint = save_checkpoint(accelerator, output_dir, loop["step"], dict(loop), rank_state, training.save_total_limit)
        except OSError as error:
            previous = find_latest_checkpoint(output_dir)
            raise TrainingError(f"cannot write the checkpoint of step {loop['step']} under {output_dir}/checkpoints "
                                f"({error.strerror or error}); free space or fix permissions, then resume: the previous "
                                f"checkpoint {previous or '(none)'} is intact") from None
        hub.checkpoint_saved(model, tokenizer, checkpoint, final=progress_of_budget() >= 1.0)  # after its barrier

    model.train()
    batches = iter(train_stream)
    window = {"targets": 0, "steps": 0, "tokens": 0, "seconds": 0.0, "wait": 0.0}
    last_logged, last_eval, consecutive_bad = None, {}, 0
    injected = {int(s) for s in os.environ.get("SSLNLP_INJECT_NONFINITE_STEPS", "").split(",") if s.strip()}
    preemption = PreemptionFlag()
    with preemption:
        while progress_of_budget() < 1.0:
            step_start = time.perf_counter()
            micro_batches = [next(batches) for _ in range(training.gradient_accumulation_steps)]
            data_wait = time.perf_counter() - step_start
            micro_batches = [{k: v.to(accelerator.device, non_blocking=True) for k, v in b.items()} for b in micro_batches]
            local_targets = sum(count_targets(b, objective) for b in micro_batches)
            # One collective per step: the global target count and whether any rank was asked to stop (SIGTERM).
            agreed = accelerator.reduce(torch.tensor([float(local_targets), float(preemption.raised)],
                                                     device=accelerator.device), "sum")
            global_targets = agreed[0]
            # Normalise by the targets of the whole global batch, so every target weighs the same whatever the
            # number of processes or micro-batches (DDP averages gradients over ranks: hence x num_processes).
            scale = accelerator.num_processes / global_targets.clamp(min=1)
            step_loss = torch.zeros((), device=accelerator.device)
            for index, batch in enumerate(micro_batches):
                sync = index == len(micro_batches) - 1
                with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                    loss_sum, _, _ = loss_function(model, batch)
                    if loop["step"] + 1 in injected:
                        loss_sum = loss_sum * float("nan")
                    accelerator.backward(loss_sum * scale)
                step_loss += loss_sum.detach()
            # The gradient norm is the same on every rank after the all-reduce: all ranks skip (or not) together.
            gradient_norm = accelerator.clip_grad_norm_(model.parameters(), training.max_grad_norm or float("inf"))
            learning_rate = training.learning_rate * learning_rate_multiplier(
                progress_of_budget(next_step=True), training.lr_scheduler_type, warmup, training.decay_ratio, training.min_lr_ratio)
            if torch.isfinite(gradient_norm):
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate
                optimizer.step()
                consecutive_bad = 0
            else:
                loop["nonfinite_steps"] = loop.get("nonfinite_steps", 0) + 1
                consecutive_bad += 1
                accelerator.print(f"step {loop['step'] + 1}: non-finite loss or gradient, step skipped "
                                  f"({loop['nonfinite_steps']} so far, {consecutive_bad} in a row)")
                if consecutive_bad >= training.max_consecutive_nonfinite_steps:
                    raise TrainingError(f"{consecutive_bad} consecutive steps had a non-finite loss or gradient (step "
                                        f"{loop['step'] + 1}); lower training.learning_rate or use bf16 instead of fp16; "
                                        f"the last good checkpoint is {find_latest_checkpoint(output_dir) or 'none'}")
            optimizer.zero_grad(set_to_none=True)

            step_tokens = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel()
                              for b in micro_batches)
            if accelerator.device.type == "cuda":  # the step's kernels, not just their launches (a sync follows anyway)
                torch.cuda.synchronize(accelerator.device)
            seconds = time.perf_counter() - step_start
            loop["step"] += 1
            loop["tokens"] += step_tokens * accelerator.num_processes
            if training.max_time:  # every rank uses rank 0's clock, so all stop (and schedule) together
                elapsed = broadcast(torch.tensor([loop["elapsed"] + seconds], dtype=torch.float64, device=accelerator.device))
                loop["elapsed"] = float(elapsed.item())
            else:
                loop["elapsed"] += seconds
            if torch.isfinite(gradient_norm):
                window["pending"] = window.get("pending", torch.zeros((), device=accelerator.device)) + step_loss
                window["targets"] += int(global_targets.item())
            window["steps"] += 1
            window["tokens"] += step_tokens * accelerator.num_processes
            window["seconds"] += seconds
            window["wait"] += data_wait
            progress.update(round(seconds, 3) if time_bar else 1)

            done = progress_of_budget() >= 1.0
            if loop["step"] % training.logging_steps == 0 or done:
                total_loss = accelerator.reduce(window.pop("pending", torch.zeros((), device=accelerator.device)), "sum").item()
                tokens_per_second = window["tokens"] / max(window["seconds"], 1e-9)
                record = {"step": loop["step"], "loss": total_loss / max(window["targets"], 1) if window["targets"] else None,
                          "learning_rate": learning_rate, "tokens": loop["tokens"], "tokens_per_second": tokens_per_second,
                          "model_flops_utilization": tokens_per_second * model_flops_per_token / peak_flops if peak_flops else None,
                          "data_wait_fraction": window["wait"] / max(window["seconds"], 1e-9), "elapsed": loop["elapsed"],
                          "nonfinite_steps": loop.get("nonfinite_steps", 0)}
                metrics.write(record)
                last_logged = record
                progress.set_postfix(loss=f"{record['loss']:.3f}" if record["loss"] is not None else "nan",
                                     lr=f"{learning_rate:.2e}", tok_s=f"{tokens_per_second:,.0f}")
                window = {"targets": 0, "steps": 0, "tokens": 0, "seconds": 0.0, "wait": 0.0}

            preempted = bool(agreed[1].item())
            if eval_batches and ((config.evaluation.eval_steps and loop["step"] % config.evaluation.eval_steps == 0) or done):
                last_eval = {"step": loop["step"], **evaluate(model, eval_batches, loss_function, accelerator)}
                metrics.write(last_eval)
                accelerator.print(f"step {loop['step']}: " + ", ".join(f"{k}={v:.4g}" for k, v in last_eval.items() if k != "step"))
            probe_steps = config.evaluation.probe_steps
            if probe_task is not None and ((probe_steps and loop["step"] % probe_steps == 0) or done):
                metrics.write(run_probe(model, tokenizer, probe_task, config, accelerator, loop["step"]))
            if (training.save_steps and loop["step"] % training.save_steps == 0) or done or preempted:
                save()
            if preempted:
                progress.close()
                accelerator.print(f"stopped by a signal at step {loop['step']}; the checkpoint is saved. Resume with: "
                                  f"sslnlp pretrain <recipe> output_dir={output_dir} training.resume_from_checkpoint=auto")
                hub.wait()
                return {"steps": loop["step"], "tokens": loop["tokens"], "preempted": True, "output_dir": str(output_dir)}
    progress.close()

    export_model(accelerator, model, tokenizer, output_dir)
    if sparse_head is not None:
        sparse_head.handle.remove()
    if training.report_to:
        accelerator.end_training()
    summary = {"steps": loop["step"], "tokens": loop["tokens"], "train_runtime": loop["elapsed"],
               "train_loss": last_logged["loss"] if last_logged else None,
               "tokens_per_second": loop["tokens"] / max(loop["elapsed"], 1e-9),
               "model_flops_per_token": model_flops_per_token, "world_size": accelerator.num_processes,
               "mixed_precision": accelerator.mixed_precision, "nonfinite_steps": loop.get("nonfinite_steps", 0),
               "model_flops_utilization": (loop["tokens"] / max(loop["elapsed"], 1e-9) / accelerator.num_processes
                                           * model_flops_per_token / peak_flops) if peak_flops else None,
               "output_dir": str(output_dir), **{k: v for k, v in last_eval.items() if k != "step"}}
    if accelerator.is_main_process:
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    pushes = hub.finish(summary)  # after the last collective: only rank 0 waits on the network
    if pushes:
        summary["hub_pushes"] = pushes
    accelerator.print(json.dumps(summary))
    return summary


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _plain(value):
    """Config values as YAML-safe data (a corpus given as a Python object is recorded by its type name)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value] if len(value) <= 64 else f"<{len(value)} items>"
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return f"<{type(value).__name__}>"
