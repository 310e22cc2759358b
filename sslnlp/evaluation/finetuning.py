"""Fine-tune a checkpoint on labelled tasks, next to the same architecture with random weights (the floor).

    sslnlp finetune recipes/evaluate/sst2.yaml finetune.seeds=[0]  # CPU: minutes
    ACCELERATE_USE_CPU=1 accelerate launch --config_file recipes/accelerate/cpu-2proc.yaml --multi_gpu \
        -m sslnlp finetune recipes/evaluate/sst2.yaml

AutoModelForSequenceClassification from the checkpoint, one fixed protocol for every task (AdamW, linear warmup and
decay, a few epochs; Cramming's "GLUE-sane" spirit: no per-task search), several seeds, median and min-max reported;
the first seed's model is saved in Hugging Face format under OUTPUT_DIR/<task>.

Writes OUTPUT_DIR/results.json and results.md (results.py) and finetune_metrics.jsonl (validation after each epoch);
a probe run (probing.py) into the same output_dir fills the same table.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from pathlib import Path

import torch

from sslnlp.runtime import make_accelerator
from sslnlp.evaluation.loading import (
    load_checkpoint_tokenizer,
    load_model_config,
    load_pretrained,
)
from sslnlp.config import EvaluateConfig, FinetuneOptions
from sslnlp.evaluation.curves import baseline_curves, curve_sizes, run_curve
from sslnlp.evaluation.features import model_columns, pad_batch, pad_token_id_of, tokenized_splits
from sslnlp.evaluation.metrics import compute_metrics
from sslnlp.evaluation.results import record_results
from sslnlp.evaluation.tasks import LabelledTask, load_task

# ------------------------------------------------------------------------------------------------------- one run


def classifier_config(model_config, task: LabelledTask, options: FinetuneOptions, tokenizer):
    """A copy of the checkpoint's transformers config with the task's head: labels, problem type, dropout, padding."""
    regression = task.problem_type == "regression"
    head_config = copy.deepcopy(model_config)
    head_config.num_labels = task.num_labels
    head_config.problem_type = "regression" if regression else "single_label_classification"
    if not regression:
        head_config.id2label = dict(enumerate(task.label_names))
        head_config.label2id = {name: i for i, name in enumerate(task.label_names)}
    if options.classifier_dropout is not None:
        head_config.classifier_dropout = options.classifier_dropout
    if getattr(head_config, "pad_token_id", None) is None:
        head_config.pad_token_id = pad_token_id_of(tokenizer)
    return head_config


def load_classifier(config: EvaluateConfig, head_config, seed: int, random_weights: bool, token_level: bool = False):
    """The checkpoint under a new classification head (a tag per token for ``token_level``), or (``random_weights``)
    the architecture with random weights; ``seed`` is set first (the head's initialisation, then dropout)."""
    from accelerate.utils import set_seed
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    set_seed(seed)
    auto_class = AutoModelForTokenClassification if token_level else AutoModelForSequenceClassification
    if random_weights:
        return auto_class.from_config(head_config, trust_remote_code=config.trust_remote_code)
    # The classification head is new (and any LM head unused): expected.
    return load_pretrained(auto_class, config, head_config, ignore_mismatched_sizes=True)


def split_loader(columns: dict[str, list], head_config, options: FinetuneOptions, shuffle: bool, seed: int,
                 pad_token_id: int, regression: bool) -> torch.utils.data.DataLoader:
    """Labelled batches of one tokenized split: shuffled from ``seed`` (training) or length-sorted (evaluation)."""
    split_columns = model_columns(columns, head_config)
    indices = list(range(len(split_columns["input_ids"])))
    if not shuffle:  # evaluation: length-sorted batches pad little; gather_for_metrics keeps the pairs aligned
        indices.sort(key=lambda i: len(split_columns["input_ids"][i]))
    return torch.utils.data.DataLoader(
        indices, batch_size=options.per_device_train_batch_size if shuffle else options.per_device_eval_batch_size,
        shuffle=shuffle, generator=torch.Generator().manual_seed(seed) if shuffle else None,
        collate_fn=lambda rows: pad_batch(split_columns, rows, pad_token_id, with_labels=True, regression=regression))


@torch.no_grad()
def predict(model, loader, accelerator, regression: bool) -> tuple:
    """(predictions [N], labels [N]) over a prepared loader, gathered from every process (duplicates dropped); a token
    task's: (predicted tags, gold tags) per sentence, at the positions that carry a word's tag."""
    model.eval()
    predictions, labels = [], []
    for batch in loader:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits  # [B, C] or [B, L, C]
        predicted = logits.squeeze(-1).float() if regression else logits.argmax(-1)
        gold = batch["labels"]
        if gold.dim() == 2:  # tags per token: pad to one length across processes before gathering
            predicted = accelerator.pad_across_processes(predicted, dim=1, pad_index=-100)
            gold = accelerator.pad_across_processes(gold, dim=1, pad_index=-100)
        predicted, gold = accelerator.gather_for_metrics((predicted, gold))
        predictions.append(predicted.cpu())
        labels.append(gold.cpu())
    model.train()
    if labels and labels[0].dim() == 2:
        sentences = [(row_p[row_g != -100].tolist(), row_g[row_g != -100].tolist())
                     for batch_p, batch_g in zip(predictions, labels) for row_p, row_g in zip(batch_p, batch_g)]
        return [p for p, _ in sentences], [g for _, g in sentences]
    return torch.cat(predictions), torch.cat(labels)


def finetune_once(task: LabelledTask, tokenizer, config: EvaluateConfig, model_config, seed: int, accelerator,
                  random_weights: bool = False, save_dir: Path | None = None, metrics_log=None) -> dict:
    """One fine-tuning run: train on ``task.train`` for the protocol's steps, validate at its evaluation points,
    score test (at the end, or with ``finetune.early_stopping`` at the best validation point).

    Args:
        task, tokenizer: the loaded task and the checkpoint's tokenizer.
        config: the EvaluateConfig (its ``finetune`` section is the protocol).
        model_config: the checkpoint's transformers config (the head's settings are added here).
        seed: seed of the head, dropout and data order (and of the weights when ``random_weights``).
        random_weights: start from random weights (the floor) instead of the checkpoint.
        save_dir: save the final model and tokenizer there (Hugging Face format).
        metrics_log: a MetricsLog for per-epoch validation records.
    Returns:
        ``{"seed", "validation": [per evaluation point {metric: value}], "test": {metric: value}, "test_step",
        "steps", "seconds"}``.
    """
    from sslnlp.models.export import export_model
    from sslnlp.models.modeling import usable_positions
    from sslnlp.runtime import learning_rate_multiplier, parameter_groups

    options: FinetuneOptions = config.finetune
    start = time.perf_counter()
    regression = task.problem_type == "regression"
    head_config = classifier_config(model_config, task, options, tokenizer)
    model = load_classifier(config, head_config, seed, random_weights, task.is_token_level)

    length = task.max_seq_length or config.max_seq_length
    positions = usable_positions(head_config)
    columns = tokenized_splits(task, tokenizer, min(length, positions) if positions else length)
    pad_id = pad_token_id_of(tokenizer)

    def loader(split: str, shuffle: bool):
        return split_loader(columns[split], head_config, options, shuffle, seed, pad_id, regression)

    optimizer = torch.optim.AdamW(parameter_groups(model, options.weight_decay), lr=options.learning_rate)
    model, optimizer, train_loader, validation_loader, test_loader = accelerator.prepare(
        model, optimizer, loader("train", True), loader("validation", False), loader("test", False))
    total_steps = training_steps(options, len(train_loader))
    checkpoints = evaluation_steps(options, total_steps, len(train_loader))
    step, epoch, history, losses, best = 0, 0, [], [], None
    model.train()
    while step < total_steps:
        epoch += 1
        for batch in train_loader:
            if step >= total_steps:
                break
            learning_rate = options.learning_rate * learning_rate_multiplier(step / total_steps, "linear",
                                                                             options.warmup_ratio, 0.0, 0.0)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate
            loss = model(**batch).loss
            accelerator.backward(loss)
            if options.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), options.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            step += 1
            if step not in checkpoints:
                continue
            validation = compute_metrics(task.metrics, *predict(model, validation_loader, accelerator, regression),
                                         label_names=task.label_names)
            train_loss = accelerator.reduce(torch.stack(losses).mean(), "mean").item()
            history.append({"epoch": epoch, "step": step, "train_loss": train_loss, **validation})
            losses = []
            if metrics_log is not None:
                metrics_log.write({"task": task.name, "seed": seed, "random_weights": random_weights, **history[-1]})
            if options.early_stopping and (best is None or validation[task.metrics[0]] > best[0]):
                best = (validation[task.metrics[0]], step, compute_metrics(
                    task.metrics, *predict(model, test_loader, accelerator, regression), label_names=task.label_names))
    if best is not None:
        test_step, test = best[1], best[2]
    else:
        test_step, test = step, compute_metrics(task.metrics, *predict(model, test_loader, accelerator, regression),
                                                label_names=task.label_names)
    if save_dir is not None:
        export_model(accelerator, model, tokenizer, save_dir)
    del model, optimizer
    accelerator.free_memory()  # drops the accelerator's references too: the next run starts clean
    return {"seed": seed, "validation": history, "test": test, "test_step": test_step, "steps": step,
            "seconds": time.perf_counter() - start}


def training_steps(options: FinetuneOptions, batches_per_epoch: int) -> int:
    """Optimizer steps of one run: finetune.max_steps, else the epochs' steps, at least finetune.min_steps."""
    steps = options.max_steps or math.ceil(options.num_train_epochs * batches_per_epoch)
    return max(1, steps, options.min_steps)


def evaluation_steps(options: FinetuneOptions, total_steps: int, batches_per_epoch: int) -> set[int]:
    """The steps after which validation runs: finetune.evaluations evenly spaced ones, else each epoch's end (the
    last step always)."""
    if options.evaluations:
        count = min(options.evaluations, total_steps)
        return {round(total_steps * (k + 1) / count) for k in range(count)}
    return set(range(batches_per_epoch, total_steps + 1, batches_per_epoch)) | {total_steps}


# ---------------------------------------------------------------------------------------------------- every task


def summarize_seeds(runs: list[dict], metrics: list[str]) -> dict:
    """Median, min and max over seeds of each test metric, plus the per-seed values and validation curves."""
    summary = {"median": {}, "min": {}, "max": {}, "seeds": [run["seed"] for run in runs],
               "runs": [run["test"] for run in runs], "validation_history": [run["validation"] for run in runs]}
    for metric in metrics:
        values = [run["test"][metric] for run in runs]
        summary["median"][metric] = statistics.median(values)
        summary["min"][metric], summary["max"][metric] = min(values), max(values)
    summary["seconds"] = sum(run["seconds"] for run in runs)
    return summary


def finetune_task(task: LabelledTask, config: EvaluateConfig, tokenizer, model_config, accelerator,
                  metrics_log=None) -> dict:
    """One task's results row: the checkpoint and its random twin fine-tuned once per seed, and the learning curve
    when ``train_sizes`` is set (the whole split's runs reused as its point)."""
    options, output_dir = config.finetune, Path(config.output_dir)
    sizes = curve_sizes(config.train_sizes, task)  # a size the task cannot give is refused before any work
    # a learning curve is the evaluation: the whole split is trained on only when it is one of its sizes
    seeds = options.seeds if not sizes or len(task.train) in sizes else []
    accelerator.print(f"finetune {task.name}: {len(task.train)} train / {len(task.validation)} validation / "
                      f"{len(task.test)} {task.report_split} examples, seeds {seeds}"
                      + (f", learning curve at {sizes} x seeds {config.curve_seeds}" if sizes else ""))
    row = {"metrics": task.metrics, "split": task.report_split, "problem_type": task.problem_type,
           "kind": task.kind, "fingerprint": task.fingerprint()}
    curves = {}
    for key, random_weights in (("finetune", False), ("random_finetune", True)):
        if random_weights and not config.random_baseline:
            continue
        runs = []
        for index, seed in enumerate(seeds):
            save = output_dir / task.name if options.save_model and index == 0 and not random_weights else None
            runs.append(finetune_once(task, tokenizer, config, model_config, seed, accelerator, random_weights,
                                      save, metrics_log))
            metric = task.metrics[0]
            accelerator.print(f"  {'random weights' if random_weights else 'pretrained'} seed {seed}: {metric} "
                              f"{runs[-1]['test'][metric]:.4f} on {task.report_split} ({runs[-1]['seconds']:.1f} s)")
        if runs:
            row[key] = {**summarize_seeds(runs, task.metrics), "world_size": accelerator.num_processes,
                        "mixed_precision": accelerator.mixed_precision}
        if key == "finetune" and options.save_model and runs:
            row[key]["model_dir"] = str(output_dir / task.name)
        if config.train_sizes:
            whole = {run["seed"]: run["test"] for run in runs}  # the whole split: these runs are that point

            def score(subset, indices, seed, random_weights=random_weights, whole=whole):
                size = len(indices)
                if size == len(task.train) and seed in whole:
                    return whole[seed]
                result = finetune_once(subset, tokenizer, config, model_config, seed, accelerator, random_weights)
                accelerator.print(f"  curve, {'random weights' if random_weights else 'pretrained'}, {size} "
                                  f"examples, seed {seed}: {task.metrics[0]} {result['test'][task.metrics[0]]:.4f}")
                return result["test"]

            curves[key] = run_curve(task, config.train_sizes, config.curve_seeds, score)
    if config.train_sizes and config.tfidf_baseline:
        curves |= baseline_curves(task, config.train_sizes, config.curve_seeds)
    if curves:
        row["curves"] = curves
    return row


def finetune(config: EvaluateConfig) -> dict:
    """Fine-tune the checkpoint (and random-weight twins) on every task, once per seed; write and return results.

    Args:
        config: an EvaluateConfig: model_name_or_path, tasks, the ``finetune`` section.

    Returns:
        the results dict also written to OUTPUT_DIR/results.json.
    """
    from sslnlp.runtime import MetricsLog

    config.check()
    task_configs = config.task_configs()
    options = config.finetune
    accelerator = make_accelerator(mixed_precision=options.mixed_precision)
    output_dir = Path(config.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    model_config = load_model_config(config)
    tokenizer = load_checkpoint_tokenizer(config)
    metrics_log = MetricsLog(accelerator, output_dir / "finetune_metrics.jsonl", trackers=False)
    rows = {}
    for task_config in task_configs:
        task = load_task(task_config)
        rows[task.name] = finetune_task(task, config, tokenizer, model_config, accelerator, metrics_log)
    return record_results(config, accelerator, rows)
