"""Score a checkpoint on labelled tasks: a linear probe of its frozen features and fine-tuning, each next to the same
architecture with random weights (the floor).

    sslnlp probe recipes/probe-wordnet.yaml                                 # CPU: minutes
    sslnlp finetune recipes/probe-wordnet.yaml finetune.seeds=[0]
    sslnlp probe model_name_or_path=bert-base-uncased "tasks=[sst2, rte]" output_dir=runs/eval-bert   # network
    ACCELERATE_USE_CPU=1 accelerate launch --config_file recipes/accelerate/cpu-2proc.yaml --multi_gpu \
        -m sslnlp finetune recipes/probe-wordnet.yaml

Both write OUTPUT_DIR/results.json and results.md (task | metric | split | probe | random-weights probe | fine-tune
median (min-max) | random-weights fine-tune); a probe and a fine-tune run into the same output_dir fill one table.

- Linear probe: features (first-token, mean or last-token pooling of one hidden layer) are computed once per split
  with the encoder frozen, kept (on disk too), standardized with the training statistics; a multinomial logistic
  regression (L-BFGS, full batch) or ridge regression (closed form) is fitted for every L2 strength of the grid; the
  strength with the best validation score gives the reported test score. ``probe.select_layer`` pools every layer
  in the same pass and reports the layer (and strength) best on validation, with the whole scan.
- Fine-tuning: AutoModelForSequenceClassification from the checkpoint, one fixed protocol for every task (AdamW,
  linear warmup and decay, a few epochs; Cramming's "GLUE-sane" spirit: no per-task search), several seeds, median
  and min-max reported; the first seed's model is saved in Hugging Face format under OUTPUT_DIR/<task>.

The metrics are plain torch: accuracy, binary F1, macro F1, Matthews correlation, Pearson, Spearman.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sslnlp.config import EvaluateConfig, FinetuneOptions, ProbeOptions, TaskConfig, build, to_dict
from sslnlp.tasks import LabelledTask, load_task

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------------- metrics


def _vector(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float64).reshape(-1)


def accuracy(predictions, labels) -> float:
    """Fraction of predictions equal to the labels."""
    predictions, labels = _vector(predictions), _vector(labels)
    return (predictions == labels).double().mean().item() if len(labels) else 0.0


def f1(predictions, labels, positive: int = 1) -> float:
    """Binary F1 of the ``positive`` class: 2 TP / (2 TP + FP + FN); 0 when it never occurs nor is predicted."""
    predictions, labels = _vector(predictions) == positive, _vector(labels) == positive
    true_positives = (predictions & labels).sum().item()
    denominator = predictions.sum().item() + labels.sum().item()
    return 2 * true_positives / denominator if denominator else 0.0


def macro_f1(predictions, labels) -> float:
    """Unweighted mean of the per-class F1 over the classes that occur in the labels or the predictions."""
    predictions, labels = _vector(predictions), _vector(labels)
    classes = torch.unique(torch.cat([predictions, labels])).tolist()
    return sum(f1(predictions, labels, positive=c) for c in classes) / len(classes) if classes else 0.0


def matthews_correlation(predictions, labels) -> float:
    """Matthews correlation coefficient, multiclass form (Gorodkin 2004; equals the binary MCC for two classes).

    With the confusion matrix C, c = trace(C), s = total, t_k = true counts, p_k = predicted counts:
    (c s - sum_k t_k p_k) / sqrt((s^2 - sum_k p_k^2)(s^2 - sum_k t_k^2)); 0 when a factor of the denominator is 0.
    """
    predictions, labels = _vector(predictions).long(), _vector(labels).long()
    classes, inverse = torch.unique(torch.cat([predictions, labels]), return_inverse=True)
    count = len(classes)
    predicted, true = inverse[: len(predictions)], inverse[len(predictions):]
    confusion = torch.zeros(count, count, dtype=torch.float64)
    confusion.index_put_((true, predicted), torch.ones(len(true), dtype=torch.float64), accumulate=True)
    total, correct = confusion.sum(), confusion.trace()
    true_counts, predicted_counts = confusion.sum(1), confusion.sum(0)
    numerator = correct * total - (true_counts * predicted_counts).sum()
    denominator = torch.sqrt((total**2 - (predicted_counts**2).sum()) * (total**2 - (true_counts**2).sum()))
    return (numerator / denominator).item() if denominator > 0 else 0.0


def pearson(predictions, labels) -> float:
    """Pearson correlation; 0 when either side is constant (undefined)."""
    x, y = _vector(predictions), _vector(labels)
    x, y = x - x.mean(), y - y.mean()
    denominator = torch.sqrt((x * x).sum() * (y * y).sum())
    return ((x * y).sum() / denominator).item() if denominator > 0 else 0.0


def average_ranks(values) -> torch.Tensor:
    """Ranks 1..n, ties sharing the mean of the ranks they span (as scipy.stats.rankdata's 'average')."""
    values = _vector(values)
    sorted_values, order = torch.sort(values, stable=True)
    _, counts = torch.unique_consecutive(sorted_values, return_counts=True)
    ends = torch.cumsum(counts, 0).double()  # rank of each group's last member
    group_ranks = ends - (counts.double() - 1) / 2
    ranks = torch.empty_like(values)
    ranks[order] = torch.repeat_interleave(group_ranks, counts)
    return ranks


def spearman(predictions, labels) -> float:
    """Spearman correlation: Pearson of the average ranks (ties handled)."""
    return pearson(average_ranks(predictions), average_ranks(labels))


METRIC_FUNCTIONS = {"accuracy": accuracy, "f1": f1, "macro_f1": macro_f1, "matthews_correlation": matthews_correlation,
                    "pearson": pearson, "spearman": spearman}


def compute_metrics(names: list[str], predictions, labels) -> dict[str, float]:
    """``{name: value}`` for each metric name (see METRIC_FUNCTIONS)."""
    return {name: METRIC_FUNCTIONS[name](predictions, labels) for name in names}


# ----------------------------------------------------------------------------------------- tokens and features


def tokenized_splits(task: LabelledTask, tokenizer, max_seq_length: int) -> dict[str, dict[str, list]]:
    """Each split tokenized once (truncated, unpadded) and kept on the task: ``{split: {column: [per example]}}``."""
    key = (getattr(tokenizer, "name_or_path", ""), len(tokenizer), type(tokenizer).__name__, max_seq_length)
    if key not in task.cache:
        splits = {}
        for split in ("train", "validation", "test"):
            examples = getattr(task, split)
            texts = [example.text for example in examples]
            pairs = [example.text_pair for example in examples] if task.is_pair else None
            encoded = tokenizer(texts, pairs, truncation=True, max_length=max_seq_length)
            splits[split] = {name: list(encoded[name]) for name in ("input_ids", "token_type_ids") if name in encoded}
            splits[split]["labels"] = [example.label for example in examples]
        task.cache.clear()  # one tokenization per task at a time: a new tokenizer replaces the old one
        task.cache[key] = splits
    return task.cache[key]


def pad_batch(columns: dict[str, list], indices: list[int], pad_token_id: int, with_labels: bool = False,
              regression: bool = False) -> dict[str, torch.Tensor]:
    """Right-pad the examples at ``indices`` to their longest: input_ids [B, L], attention_mask [B, L], ..."""
    length = max(len(columns["input_ids"][i]) for i in indices)
    batch = {"input_ids": torch.full((len(indices), length), pad_token_id, dtype=torch.long),
             "attention_mask": torch.zeros(len(indices), length, dtype=torch.long)}
    if "token_type_ids" in columns:
        batch["token_type_ids"] = torch.zeros(len(indices), length, dtype=torch.long)
    for row, index in enumerate(indices):
        ids = columns["input_ids"][index]
        batch["input_ids"][row, : len(ids)] = torch.tensor(ids)
        batch["attention_mask"][row, : len(ids)] = 1
        if "token_type_ids" in columns:
            batch["token_type_ids"][row, : len(ids)] = torch.tensor(columns["token_type_ids"][index])
    if with_labels:
        labels = [columns["labels"][i] for i in indices]
        batch["labels"] = torch.tensor(labels, dtype=torch.float32 if regression else torch.long)
    return batch


def model_columns(columns: dict[str, list], model_config) -> dict[str, list]:
    """The tokenized columns this model reads: token_type_ids only where the model has more than one token type
    (BERT); RoBERTa-style models (type_vocab_size 1) and decoders get none, whatever the tokenizer returned."""
    if getattr(model_config, "type_vocab_size", 0) > 1:
        return columns
    return {name: values for name, values in columns.items() if name != "token_type_ids"}


def pad_token_id_of(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return candidate


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """hidden [B, L, H], attention_mask [B, L] (right padding) -> [B, H]."""
    if pooling == "first":
        return hidden[:, 0]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    if pooling == "last":
        last = attention_mask.sum(1).clamp(min=1) - 1
        return hidden[torch.arange(len(hidden), device=hidden.device), last]
    raise ValueError(f"unknown pooling {pooling!r}; choose one of first, mean, last")


@torch.no_grad()
def extract_features(encoder, columns: dict[str, list], indices: list[int], pooling: str, layer: int | None,
                     batch_size: int, pad_token_id: int) -> torch.Tensor:
    """Pooled features [len(indices), H] (float32, CPU) of the examples at ``indices``, in that order.

    ``layer`` None pools every layer: [len(indices), layers + 1, H], the embeddings first and the model's output
    (``last_hidden_state``, what layer -1 gives) last. Batches are formed from length-sorted examples, so padding
    stays small.
    """
    device = next(encoder.parameters()).device
    order = sorted(range(len(indices)), key=lambda k: len(columns["input_ids"][indices[k]]))
    features = None
    for start in range(0, len(order), batch_size):
        rows = order[start: start + batch_size]
        batch = {k: v.to(device) for k, v in pad_batch(columns, [indices[k] for k in rows], pad_token_id).items()}
        outputs = encoder(**batch, output_hidden_states=layer != -1, return_dict=True)
        if layer is None:
            hidden_states = [*outputs.hidden_states[:-1], outputs.last_hidden_state]
            pooled = torch.stack([pool(h, batch["attention_mask"], pooling) for h in hidden_states], 1).float().cpu()
        else:
            hidden = outputs.last_hidden_state if layer == -1 else outputs.hidden_states[layer]  # [B, L, H]
            pooled = pool(hidden, batch["attention_mask"], pooling).float().cpu()
        if features is None:
            features = torch.empty(len(indices), *pooled.shape[1:])
        features[rows] = pooled
    return features if features is not None else torch.empty(0, 0)


def _hidden_layers(model) -> int | None:
    config = model.config
    return getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)


def task_features(encoder, tokenizer, task: LabelledTask, options: ProbeOptions, max_seq_length: int,
                  accelerator=None) -> dict[str, torch.Tensor]:
    """``{split: features [N, H]}`` for the three splits; with several processes each computes a share."""
    layers = _hidden_layers(encoder)
    if not options.select_layer and options.layer != -1 and layers is not None \
            and not -(layers + 1) <= options.layer <= layers:
        raise ValueError(f"probe.layer={options.layer} is out of range: the model has {layers} layers (use -1 for "
                         f"the last, 0 for the embeddings, up to {layers})")
    columns = tokenized_splits(task, tokenizer, max_seq_length)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    features = {}
    for split, split_columns in columns.items():
        split_columns = model_columns(split_columns, encoder.config)
        indices = list(range(rank, len(split_columns["input_ids"]), world))
        mine = extract_features(encoder, split_columns, indices, options.pooling,
                                None if options.select_layer else options.layer,
                                options.per_device_eval_batch_size, pad_token_id_of(tokenizer))
        if world > 1:
            from accelerate.utils import gather_object

            shares = gather_object([(indices, mine)])
            shape = next(s[1].shape[1:] for s in shares if s[0])
            whole = torch.empty(len(split_columns["input_ids"]), *shape)
            for share_indices, share in shares:
                if share_indices:
                    whole[share_indices] = share
            mine = whole
        features[split] = mine
    return features


# ----------------------------------------------------------------------------------------------- linear probe


def fit_logistic_regression(features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float,
                            max_iterations: int = 200, initial: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression, full-batch L-BFGS on mean cross-entropy + l2 / 2 * ||W||^2 (bias free).

    Args:
        features: [N, H] (standardized); labels: [N] class ids.
        initial: (weight [H, C], bias [C]) to start from (warm start along the L2 grid).
    Returns:
        (weight [H, C], bias [C]).
    """
    weight = (initial[0].clone() if initial else torch.zeros(features.shape[1], num_classes)).requires_grad_(True)
    bias = (initial[1].clone() if initial else torch.zeros(num_classes)).requires_grad_(True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iterations, history_size=20,
                                  tolerance_grad=1e-6, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(features @ weight + bias, labels) + 0.5 * l2 * (weight * weight).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def fit_ridge_regression(features: torch.Tensor, targets: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form ridge on mean squared error + l2 * ||w||^2 (bias free): w = (X'X + N l2 I)^-1 X'(y - mean y)."""
    x, y = features.double(), targets.double()
    offset = y.mean()
    gram = x.T @ x + len(x) * l2 * torch.eye(x.shape[1], dtype=torch.float64)
    weight = torch.linalg.solve(gram + 1e-9 * torch.eye(x.shape[1], dtype=torch.float64), x.T @ (y - offset))
    return weight.float(), offset.float()


def linear_probe(features: dict[str, torch.Tensor], task: LabelledTask, options: ProbeOptions) -> dict:
    """Fit the probe for every L2 strength, select on validation, score test.

    Args:
        features: ``{"train" | "validation" | "test": [N, H]}``.
        task: the task (labels, problem type, metrics; the first metric selects).
        options: the probe settings (l2_grid, max_iterations).
    Returns:
        ``{"metric", "split", "l2", "validation": {...}, "test": {...}, "grid": [{"l2", metric}]}``.
    """
    mean = features["train"].mean(0)
    scale = features["train"].std(0).clamp(min=1e-6)
    standardized = {split: (values - mean) / scale for split, values in features.items()}
    regression = task.problem_type == "regression"
    labels = {split: torch.tensor([e.label for e in getattr(task, split)],
                                  dtype=torch.float32 if regression else torch.long) for split in standardized}
    metric = task.metrics[0]

    def predict(parameters, split):
        scores = standardized[split] @ parameters[0] + parameters[1]
        return scores if regression else scores.argmax(-1)

    best, grid, parameters = None, [], None
    for l2 in sorted(options.l2_grid, reverse=True):  # strongest first: each fit warm-starts the next
        if regression:
            parameters = fit_ridge_regression(standardized["train"], labels["train"], l2)
        else:
            parameters = fit_logistic_regression(standardized["train"], labels["train"], task.num_labels, l2,
                                                 options.max_iterations, parameters)
        validation = compute_metrics(task.metrics, predict(parameters, "validation"), labels["validation"])
        grid.append({"l2": l2, metric: validation[metric]})
        if best is None or validation[metric] > best[1][metric]:  # ties keep the stronger regularisation
            best = (l2, validation, parameters)
    l2, validation, parameters = best
    test = compute_metrics(task.metrics, predict(parameters, "test"), labels["test"])
    train = compute_metrics(task.metrics, predict(parameters, "train"), labels["train"])
    return {"metric": metric, "split": task.report_split, "l2": l2, "train": train, "validation": validation,
            "test": test, "grid": grid, "feature_size": int(features["train"].shape[1])}


_LOADED_TASKS: dict[str, LabelledTask] = {}


def _as_loaded_task(task) -> LabelledTask:
    """A LabelledTask as is; a TaskConfig, mapping or GLUE name is loaded once per process and kept."""
    if isinstance(task, LabelledTask):
        return task
    if isinstance(task, str):
        task = {"name": task}
    if isinstance(task, dict):
        task = build(TaskConfig, task, prefix="task.")
    key = repr(task)
    if key not in _LOADED_TASKS:
        _LOADED_TASKS[key] = load_task(task)
    return _LOADED_TASKS[key]


def probe_model(model, tokenizer, task, options: ProbeOptions | None = None, max_seq_length: int = 128,
                accelerator=None, features_path: str | Path | None = None) -> dict:
    """Linear probe of an in-memory model (what ``pretrain()`` calls every N steps, and ``probe()`` per checkpoint).

    The model is put in eval mode for the feature pass and put back in the mode it was in; its encoder
    (``model.base_model``: an MLM or LM head is not used) runs under ``torch.no_grad``. The tokenized task is kept on
    the LabelledTask, so repeated probes tokenize once.

    Args:
        model: an unwrapped transformers model (AutoModel, AutoModelForMaskedLM, ... ) on its device.
        tokenizer: its tokenizer.
        task: a LabelledTask (from ``load_task``), a TaskConfig, a mapping of TaskConfig keys or a GLUE name.
        options: ProbeOptions (pooling, layer, batch size, L2 grid); default ProbeOptions().
        max_seq_length: longest input in tokens (the task's max_seq_length wins; capped by the model's positions).
        accelerator: with several processes, each extracts a share of the features (all must call).
        features_path: a .pt file to load the features from, or to save them to after extraction.

    Returns:
        ``{"metric", "split", "l2", "train" | "validation" | "test": {metric: value}, "grid", "feature_size",
        "seconds"}``; ``result["test"][result["metric"]]`` is the headline score.
    """
    from sslnlp.modeling import usable_positions

    start = time.perf_counter()
    options = options or ProbeOptions()
    task = _as_loaded_task(task)
    encoder = getattr(model, "base_model", model)
    length = task.max_seq_length or max_seq_length
    positions = usable_positions(model.config)
    if positions:
        length = min(length, positions)
    features = None
    if features_path is not None and _every_process_sees(Path(features_path), accelerator):
        features = torch.load(features_path, weights_only=True)
    if features is None:
        was_training = model.training
        model.eval()
        try:
            features = task_features(encoder, tokenizer, task, options, length, accelerator)
        finally:
            model.train(was_training)
        if features_path is not None and (accelerator is None or accelerator.is_main_process):
            Path(features_path).parent.mkdir(parents=True, exist_ok=True)
            temporary = Path(f"{features_path}.tmp-{os.getpid()}")
            torch.save(features, temporary)
            os.replace(temporary, features_path)
    if options.select_layer:
        result = select_layer(features, task, options)
    else:
        result = linear_probe(features, task, options)
    result["seconds"] = time.perf_counter() - start
    return result


def select_layer(features: dict[str, torch.Tensor], task: LabelledTask, options: ProbeOptions) -> dict:
    """The probe of every layer (features ``{split: [N, layers + 1, H]}``); returns the one best on validation.

    Returns:
        linear_probe's result for the chosen layer, plus ``"layer"`` (0 the embeddings ... the last) and
        ``"layer_scan"``: ``[{"layer", "validation", "test"}]`` (the first metric) for every layer.
    """
    best, scan = None, []
    for layer in range(features["train"].shape[1]):
        result = linear_probe({split: values[:, layer] for split, values in features.items()}, task, options)
        metric = result["metric"]
        scan.append({"layer": layer, "validation": result["validation"][metric], "test": result["test"][metric]})
        if best is None or result["validation"][metric] > best["validation"][metric]:  # ties keep the lower layer
            best = result | {"layer": layer}
    return best | {"layer_scan": scan}


def _every_process_sees(path: Path, accelerator) -> bool:
    """True when the file exists for every process (all read the cache, or all compute their share together)."""
    found = path.is_file()
    if accelerator is None or accelerator.num_processes == 1:
        return found
    count = accelerator.reduce(torch.tensor([float(found)], device=accelerator.device), "sum")
    return int(count.item()) == accelerator.num_processes


# ------------------------------------------------------------------------------------------------ model loading


def _accelerator(mixed_precision: str | None = None):
    """The shared Accelerator factory (resets a different precision left by an earlier run in this process)."""
    from sslnlp.runtime import make_accelerator

    return make_accelerator(mixed_precision=mixed_precision)


class _QuietLoading:
    """Silences transformers' load report while a checkpoint loads into another head: the MLM head's weights are
    unused and the classifier's are new, by design; one line of ours says so instead."""

    def __enter__(self):
        import transformers

        self.verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()

    def __exit__(self, *exc):
        import transformers

        transformers.logging.set_verbosity(self.verbosity)


def _load_model_config(config: EvaluateConfig):
    from transformers import AutoConfig

    from sslnlp.modeling import ModelError

    try:
        return AutoConfig.from_pretrained(config.model_name_or_path, trust_remote_code=config.trust_remote_code)
    except Exception as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ModelError(f"model_name_or_path={config.model_name_or_path!r} is not a loadable model ({reason}); give a "
                         "directory with config.json (e.g. runs/tiny-cpu after `sslnlp pretrain recipes/tiny-cpu.yaml`) "
                         "or a Hub name (needs network)") from None


def _load_tokenizer(config: EvaluateConfig):
    from sslnlp.tokenizer import load_tokenizer

    return load_tokenizer(config.tokenizer_name_or_path or config.model_name_or_path,
                          trust_remote_code=config.trust_remote_code)


def _checkpoint_identity(config: EvaluateConfig) -> str:
    """The checkpoint's name plus the size and time of its weight files: cached features follow retraining."""
    path = Path(config.model_name_or_path).expanduser()
    if not path.is_dir():
        return config.model_name_or_path
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    return json.dumps([str(path.resolve())] + [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files])


def _features_path(config: EvaluateConfig, task: LabelledTask, weights: str, max_seq_length: int, tokenizer) -> Path | None:
    if not config.probe.cache_features:
        return None
    key = json.dumps([_checkpoint_identity(config), weights, task.fingerprint(), config.probe.pooling,
                      "every" if config.probe.select_layer else config.probe.layer, max_seq_length,
                      getattr(tokenizer, "name_or_path", ""), len(tokenizer)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(config.output_dir) / "features" / f"{task.name}-{weights}-{digest}.pt"


def _random_twin(model_config, seed: int, auto_class):
    """The same architecture with random weights, drawn from ``seed``."""
    from accelerate.utils import set_seed

    set_seed(seed)
    return auto_class.from_config(model_config)


# ------------------------------------------------------------------------------------------------------- probe


def probe(config: EvaluateConfig) -> dict:
    """Linear-probe a checkpoint (and its random-weight twin) on every task; write and return the results.

    Args:
        config: an EvaluateConfig (``ProbeConfig``): model_name_or_path, tasks, the ``probe`` section.

    Returns:
        the results dict also written to OUTPUT_DIR/results.json (``{"model_name_or_path", "tasks": {name: ...}}``).
    """
    from transformers import AutoModel

    config.check()
    task_configs = config.task_configs()
    accelerator = _accelerator()
    model_config = _load_model_config(config)
    tokenizer = _load_tokenizer(config)
    with _QuietLoading():
        encoder = AutoModel.from_pretrained(config.model_name_or_path, config=model_config,
                                            trust_remote_code=config.trust_remote_code).to(accelerator.device)
    logger.info("loaded the encoder of %s (any LM head unused)", config.model_name_or_path)
    twin = (_random_twin(model_config, config.seed, AutoModel).to(accelerator.device)
            if config.random_baseline else None)
    rows = {}
    for task_config in task_configs:
        task = load_task(task_config)
        length = task.max_seq_length or config.max_seq_length
        accelerator.print(f"probe {task.name}: {len(task.train)} train / {len(task.validation)} validation / "
                          f"{len(task.test)} {task.report_split} examples, {config.probe.pooling} pooling")
        row = {"metrics": task.metrics, "split": task.report_split, "problem_type": task.problem_type,
               "fingerprint": task.fingerprint()}
        for key, model, weights in (("probe", encoder, "pretrained"), ("random_probe", twin, f"random-seed{config.seed}")):
            if model is None:
                continue
            path = _features_path(config, task, weights, length, tokenizer)
            row[key] = {**probe_model(model, tokenizer, task, config.probe, length, accelerator, path),
                        "world_size": accelerator.num_processes}
            layer = f"layer {row[key]['layer']} chosen on validation, " if "layer" in row[key] else ""
            accelerator.print(f"  {weights}: {row[key]['metric']} {row[key]['test'][row[key]['metric']]:.4f} on "
                              f"{task.report_split} ({layer}l2={row[key]['l2']:g}, {row[key]['seconds']:.1f} s)")
        rows[task.name] = row
    return _finish(config, accelerator, rows)


# ---------------------------------------------------------------------------------------------------- finetune


@torch.no_grad()
def predict(model, loader, accelerator, regression: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(predictions [N], labels [N]) over a prepared loader, gathered from every process (duplicates dropped)."""
    model.eval()
    predictions, labels = [], []
    for batch in loader:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits  # [B, C]
        predicted = logits.squeeze(-1).float() if regression else logits.argmax(-1)
        predicted, gold = accelerator.gather_for_metrics((predicted, batch["labels"]))
        predictions.append(predicted.cpu())
        labels.append(gold.cpu())
    model.train()
    return torch.cat(predictions), torch.cat(labels)


def finetune_once(task: LabelledTask, tokenizer, config: EvaluateConfig, model_config, seed: int, accelerator,
                  random_weights: bool = False, save_dir: Path | None = None, metrics_log=None) -> dict:
    """One fine-tuning run: train on ``task.train`` for the protocol's epochs, validate each epoch, score test.

    Args:
        task, tokenizer: the loaded task and the checkpoint's tokenizer.
        config: the EvaluateConfig (its ``finetune`` section is the protocol).
        model_config: the checkpoint's transformers config (the head's settings are added here).
        seed: seed of the head, dropout and data order (and of the weights when ``random_weights``).
        random_weights: start from random weights (the floor) instead of the checkpoint.
        save_dir: save the final model and tokenizer there (Hugging Face format).
        metrics_log: a MetricsLog for per-epoch validation records.
    Returns:
        ``{"seed", "validation": [per epoch {metric: value}], "test": {metric: value}, "steps", "seconds"}``.
    """
    import copy

    from accelerate.utils import set_seed
    from transformers import AutoModelForSequenceClassification

    from sslnlp.checkpoint import export_model
    from sslnlp.modeling import usable_positions
    from sslnlp.runtime import learning_rate_multiplier, parameter_groups

    options: FinetuneOptions = config.finetune
    start = time.perf_counter()
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
    set_seed(seed)
    if random_weights:
        model = AutoModelForSequenceClassification.from_config(head_config, trust_remote_code=config.trust_remote_code)
    else:
        with _QuietLoading():  # the classification head is new (and any LM head unused): expected
            model = AutoModelForSequenceClassification.from_pretrained(
                config.model_name_or_path, config=head_config, ignore_mismatched_sizes=True,
                trust_remote_code=config.trust_remote_code)

    length = task.max_seq_length or config.max_seq_length
    positions = usable_positions(head_config)
    columns = tokenized_splits(task, tokenizer, min(length, positions) if positions else length)
    pad_id = pad_token_id_of(tokenizer)

    def loader(split: str, shuffle: bool):
        split_columns = model_columns(columns[split], head_config)
        indices = list(range(len(split_columns["input_ids"])))
        if not shuffle:  # evaluation: length-sorted batches pad little; gather_for_metrics keeps the pairs aligned
            indices.sort(key=lambda i: len(split_columns["input_ids"][i]))
        return torch.utils.data.DataLoader(
            indices, batch_size=options.per_device_train_batch_size if shuffle else options.per_device_eval_batch_size,
            shuffle=shuffle, generator=torch.Generator().manual_seed(seed) if shuffle else None,
            collate_fn=lambda rows: pad_batch(split_columns, rows, pad_id, with_labels=True, regression=regression))

    optimizer = torch.optim.AdamW(parameter_groups(model, options.weight_decay), lr=options.learning_rate)
    model, optimizer, train_loader, validation_loader, test_loader = accelerator.prepare(
        model, optimizer, loader("train", True), loader("validation", False), loader("test", False))
    total_steps = max(1, math.ceil(options.num_train_epochs * len(train_loader)))
    step, epoch, history = 0, 0, []
    model.train()
    while step < total_steps:
        epoch += 1
        losses = []
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
        validation = compute_metrics(task.metrics, *predict(model, validation_loader, accelerator, regression))
        train_loss = accelerator.reduce(torch.stack(losses).mean(), "mean").item() if losses else float("nan")
        history.append({"epoch": epoch, "step": step, "train_loss": train_loss, **validation})
        if metrics_log is not None:
            metrics_log.write({"task": task.name, "seed": seed, "random_weights": random_weights, **history[-1]})
    test = compute_metrics(task.metrics, *predict(model, test_loader, accelerator, regression))
    if save_dir is not None:
        export_model(accelerator, model, tokenizer, save_dir)
    del model, optimizer
    accelerator.free_memory()  # drops the accelerator's references too: the next run starts clean
    return {"seed": seed, "validation": history, "test": test, "steps": step, "seconds": time.perf_counter() - start}


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


def finetune(config: EvaluateConfig) -> dict:
    """Fine-tune the checkpoint (and random-weight twins) on every task, once per seed; write and return results.

    Args:
        config: an EvaluateConfig (``FinetuneConfig``): model_name_or_path, tasks, the ``finetune`` section.

    Returns:
        the results dict also written to OUTPUT_DIR/results.json.
    """
    from sslnlp.runtime import MetricsLog

    config.check()
    task_configs = config.task_configs()
    options = config.finetune
    accelerator = _accelerator(options.mixed_precision)
    output_dir = Path(config.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    model_config = _load_model_config(config)
    tokenizer = _load_tokenizer(config)
    metrics_log = MetricsLog(accelerator, output_dir / "finetune_metrics.jsonl", trackers=False)
    rows = {}
    for task_config in task_configs:
        task = load_task(task_config)
        accelerator.print(f"finetune {task.name}: {len(task.train)} train / {len(task.validation)} validation / "
                          f"{len(task.test)} {task.report_split} examples, seeds {options.seeds}")
        row = {"metrics": task.metrics, "split": task.report_split, "problem_type": task.problem_type,
               "fingerprint": task.fingerprint()}
        for key, random_weights in (("finetune", False), ("random_finetune", True)):
            if random_weights and not config.random_baseline:
                continue
            runs = []
            for index, seed in enumerate(options.seeds):
                save = output_dir / task.name if options.save_model and index == 0 and not random_weights else None
                runs.append(finetune_once(task, tokenizer, config, model_config, seed, accelerator, random_weights,
                                          save, metrics_log))
                metric = task.metrics[0]
                accelerator.print(f"  {'random weights' if random_weights else 'pretrained'} seed {seed}: {metric} "
                                  f"{runs[-1]['test'][metric]:.4f} on {task.report_split} ({runs[-1]['seconds']:.1f} s)")
            row[key] = {**summarize_seeds(runs, task.metrics), "world_size": accelerator.num_processes,
                        "mixed_precision": accelerator.mixed_precision}
            if key == "finetune" and options.save_model:
                row[key]["model_dir"] = str(output_dir / task.name)
        rows[task.name] = row
    return _finish(config, accelerator, rows)


# ------------------------------------------------------------------------------------------------------ results


RESULT_KEYS = ("probe", "random_probe", "finetune", "random_finetune")


def update_results(output_dir: str | Path, model_name_or_path: str, rows: dict) -> dict:
    """Merge this run's rows into OUTPUT_DIR/results.json (a probe and a fine-tune run fill one table); return it.

    A results.json written for another checkpoint is replaced, not merged.
    """
    path = Path(output_dir) / "results.json"
    results = {"model_name_or_path": model_name_or_path, "tasks": {}}
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except json.JSONDecodeError:
            previous = {}
        if previous.get("model_name_or_path") == model_name_or_path:
            results = previous
    for name, row in rows.items():
        merged = results["tasks"].get(name, {})
        if merged.get("fingerprint") != row["fingerprint"]:
            merged = {}  # the task's data changed: its old numbers do not belong next to the new ones
        merged.update(row)
        results["tasks"][name] = merged
    return results


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def results_markdown(results: dict, references: dict | None = None) -> str:
    """The results table: one row per task and metric, each score next to its random-weight floor.

    Args:
        results: the dict of ``update_results``.
        references: optional ``{task: {label: score}}`` printed under the table (known baselines).
    """
    lines = [f"Results for `{results['model_name_or_path']}` (scores x 100; fine-tune: median of seeds, (min-max))",
             "", "| task | metric | split | probe | random-weights probe | fine-tune median (min-max) | "
                 "random-weights fine-tune |", "|---|---|---|---:|---:|---:|---:|"]
    for name, row in results["tasks"].items():
        for metric in row["metrics"]:
            cells = []
            for key in ("probe", "random_probe"):
                layer = f" (layer {row[key]['layer']})" if key in row and "layer" in row[key] else ""
                cells.append(_percent(row[key]["test"][metric]) + layer if key in row else "–")
            if "finetune" in row:
                summary = row["finetune"]
                cells.append(f"{_percent(summary['median'][metric])} ({_percent(summary['min'][metric])}-"
                             f"{_percent(summary['max'][metric])})")
            else:
                cells.append("–")
            cells.append(_percent(row["random_finetune"]["median"][metric]) if "random_finetune" in row else "–")
            lines.append(f"| {name} | {metric} | {row['split']} | " + " | ".join(cells) + " |")
    for task, known in (references or {}).items():
        lines.append("")
        lines.append(f"Known references for {task}: " + "; ".join(f"{label} {_percent(score)}"
                                                                   for label, score in known.items()))
    return "\n".join(lines) + "\n"


def write_results(output_dir: str | Path, results: dict) -> None:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (("results.json", json.dumps(results, indent=2)), ("results.md", results_markdown(results))):
        temporary = output_dir / f".{name}.tmp"
        temporary.write_text(text)
        os.replace(temporary, output_dir / name)


def _finish(config: EvaluateConfig, accelerator, rows: dict) -> dict:
    results = update_results(config.output_dir, config.model_name_or_path, rows)
    if accelerator.is_main_process:
        write_results(config.output_dir, results)
        (Path(config.output_dir) / "evaluate_config.json").write_text(json.dumps(to_dict(config), indent=2, default=str))
    accelerator.wait_for_everyone()
    accelerator.print(results_markdown(results))
    return results


# ----------------------------------------------------------------------------------------------------- commands


def _load_command_config(args: argparse.Namespace) -> EvaluateConfig:
    from sslnlp.config import load_config

    recipe, overrides = args.recipe, list(args.overrides)
    if recipe is not None and "=" in recipe and not recipe.endswith((".yaml", ".yml")):
        recipe, overrides = None, [recipe] + overrides  # no recipe, only overrides
    return load_config(EvaluateConfig, recipe, overrides)


def run_probe_command(args: argparse.Namespace) -> None:
    """`sslnlp probe [RECIPE] key=value ...` (args: ``recipe`` and ``overrides``, as `sslnlp pretrain`)."""
    probe(_load_command_config(args))


def run_finetune_command(args: argparse.Namespace) -> None:
    """`sslnlp finetune [RECIPE] key=value ...` (args: ``recipe`` and ``overrides``, as `sslnlp pretrain`)."""
    finetune(_load_command_config(args))
