"""Linear probe of a checkpoint's frozen features on labelled tasks, next to the same architecture with random
weights (the floor).

    sslnlp probe recipes/evaluate/sst2.yaml                        # CPU: minutes
    sslnlp probe model_name_or_path=bert-base-uncased "tasks=[sst2, rte]" output_dir=runs/eval-bert   # network
    ACCELERATE_USE_CPU=1 accelerate launch --config_file recipes/accelerate/cpu-2proc.yaml --multi_gpu \
        -m sslnlp probe recipes/evaluate/sst2.yaml

Features (first-token, mean or last-token pooling of one hidden layer; features.py) are computed once per split with
the encoder frozen, kept (on disk too), standardized with the training statistics; a multinomial logistic regression
(L-BFGS, full batch) or ridge regression (closed form) is fitted for every L2 strength of the grid; the strength with
the best validation score gives the reported test score. ``probe.select_layer`` pools every layer in the same pass
and reports the layer (and strength) best on validation, with the whole scan. ``probe_model`` probes an in-memory
model (what ``pretrain()`` calls every N steps).

Writes OUTPUT_DIR/results.json and results.md (results.py); a fine-tune run (finetuning.py) into the same output_dir
fills the same table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sslnlp.files import atomic_path
from sslnlp.runtime import make_accelerator
from sslnlp.evaluation.loading import (
    checkpoint_identity,
    load_checkpoint_tokenizer,
    load_model_config,
    load_pretrained,
    random_twin,
)
from sslnlp.config import EvaluateConfig, ProbeOptions, TaskConfig, build
from sslnlp.evaluation.curves import baseline_curves, curve_sizes, run_curve
from sslnlp.evaluation.features import task_features
from sslnlp.evaluation.metrics import compute_metrics
from sslnlp.evaluation.results import record_results
from sslnlp.evaluation.tasks import LabelledTask, load_task

logger = logging.getLogger(__name__)

# -------------------------------------------------------------------------------------------------- linear probe


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


def task_labels(task: LabelledTask, splits) -> dict[str, torch.Tensor]:
    """The labels of each split (class ids, or floats for regression; a token task: its kept words' tags)."""
    if task.is_token_level:
        return {split: task.targets[split]["labels"] for split in splits}
    dtype = torch.float32 if task.problem_type == "regression" else torch.long
    return {split: torch.tensor([e.label for e in getattr(task, split)], dtype=dtype) for split in splits}


def split_metrics(task: LabelledTask, split: str, predictions: torch.Tensor, labels: torch.Tensor) -> dict:
    """The task's metrics on one split's predictions (a token task: cut back into sentences for entity F1)."""
    if not task.is_token_level:
        return compute_metrics(task.metrics, predictions, labels)
    lengths = task.targets[split]["lengths"].tolist()
    return compute_metrics(task.metrics, [part.tolist() for part in predictions.split(lengths)],
                           [part.tolist() for part in labels.split(lengths)], label_names=task.label_names)


def embedding_scores(features: dict[str, torch.Tensor], task: LabelledTask) -> dict:
    """What the embedding space shows without a fitted probe (geometry.py): the kNN score (k chosen on validation)
    and alignment / uniformity of the reported split (sentence tasks only: a word is no sentence embedding)."""
    from sslnlp.evaluation.geometry import geometry, knn_score

    if task.is_token_level:
        return {}
    labels = task_labels(task, features)
    classification = task.problem_type != "regression"
    return {"knn": knn_score(features, labels, task.metrics, task.num_labels if classification else None),
            "geometry": geometry(features["test"], labels["test"] if classification else None)}


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
    labels = task_labels(task, standardized)
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
        validation = split_metrics(task, "validation", predict(parameters, "validation"), labels["validation"])
        grid.append({"l2": l2, metric: validation[metric]})
        if best is None or validation[metric] > best[1][metric]:  # ties keep the stronger regularisation
            best = (l2, validation, parameters)
    l2, validation, parameters = best
    test = split_metrics(task, "test", predict(parameters, "test"), labels["test"])
    train = split_metrics(task, "train", predict(parameters, "train"), labels["train"])
    return {"metric": metric, "split": task.report_split, "l2": l2, "train": train, "validation": validation,
            "test": test, "grid": grid, "feature_size": int(features["train"].shape[1])}


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


# -------------------------------------------------------------------------------------------- an in-memory model


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


def _every_process_sees(path: Path, accelerator) -> bool:
    """True when the file exists for every process (all read the cache, or all compute their share together)."""
    found = path.is_file()
    if accelerator is None or accelerator.num_processes == 1:
        return found
    count = accelerator.reduce(torch.tensor([float(found)], device=accelerator.device), "sum")
    return int(count.item()) == accelerator.num_processes


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
        "knn": {"k", "validation", "test", "grid"}, "geometry": {"alignment", "uniformity", "examples"},
        "seconds"}``; ``result["test"][result["metric"]]`` is the headline score.
    """
    start = time.perf_counter()
    options = options or ProbeOptions()
    task = _as_loaded_task(task)
    features = model_features(model, tokenizer, task, options, max_seq_length, accelerator, features_path)
    return probe_features(features, task, options) | {"seconds": time.perf_counter() - start}


def model_features(model, tokenizer, task: LabelledTask, options: ProbeOptions, max_seq_length: int = 128,
                   accelerator=None, features_path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The frozen features of every split of ``task`` (``{split: [N, H]}``, or ``[N, layers + 1, H]`` with
    ``options.select_layer``), read from ``features_path`` when every process has it, else extracted (and saved
    there). Arguments as for ``probe_model``."""
    from sslnlp.models.modeling import usable_positions

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
            with atomic_path(features_path, per_process=True) as temporary:
                torch.save(features, temporary)
    for key in [key for key in features if ":" in key]:  # a token task's word targets travel with its features
        name, split = key.split(":")
        task.targets.setdefault(split, {})[name] = features.pop(key)
    return features


def probe_features(features: dict[str, torch.Tensor], task: LabelledTask, options: ProbeOptions) -> dict:
    """The probe (of the layer best on validation with ``options.select_layer``) and the embedding-space scores of
    the probed layer; ``result["features"]`` is not included (see ``probed_layer``)."""
    if options.select_layer:
        result = select_layer(features, task, options)
    else:
        result = linear_probe(features, task, options)
    return result | embedding_scores(probed_layer(features, result), task)


def probed_layer(features: dict[str, torch.Tensor], result: dict) -> dict[str, torch.Tensor]:
    """The features of the layer a probe result used (all of them when there was no layer to choose)."""
    if "layer" not in result:
        return features
    return {split: values[:, result["layer"]] for split, values in features.items()}


def probe_curve(features: dict[str, torch.Tensor], task: LabelledTask, options: ProbeOptions, sizes: list,
                seeds: list[int]) -> list[dict]:
    """The learning curve of the probe: refitted (L2 chosen on the whole validation split) on each stratified subset
    of the train split's features."""
    def score(subset, indices, seed):
        rows = torch.tensor(indices)
        if task.is_token_level:  # the subset's sentences' words
            lengths = task.targets["train"]["lengths"]
            starts = torch.cumsum(lengths, 0) - lengths
            rows = torch.cat([torch.arange(starts[i], starts[i] + lengths[i]) for i in indices])
            subset.targets = {**task.targets, "train": {"labels": task.targets["train"]["labels"][rows],
                                                        "lengths": lengths[torch.tensor(indices)]}}
        return linear_probe({**features, "train": features["train"][rows]}, subset, options)["test"]

    return run_curve(task, sizes, seeds, score)


# -------------------------------------------------------------------------------------------------- a checkpoint


def _features_path(config: EvaluateConfig, task: LabelledTask, weights: str, max_seq_length: int,
                   tokenizer) -> Path | None:
    """Where the features of this checkpoint, weights, task, pooling, layer and tokenizer are cached; None
    without ``probe.cache_features``."""
    if not config.probe.cache_features:
        return None
    key = json.dumps([checkpoint_identity(config), weights, task.fingerprint(), config.probe.pooling,
                      "every" if config.probe.select_layer else config.probe.layer, max_seq_length,
                      getattr(tokenizer, "name_or_path", ""), len(tokenizer)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(config.output_dir) / "features" / f"{task.name}-{weights}-{digest}.pt"


def probe(config: EvaluateConfig) -> dict:
    """Linear-probe a checkpoint (and its random-weight twin) on every task; write and return the results.

    Args:
        config: an EvaluateConfig: model_name_or_path, tasks, the ``probe`` section.

    Returns:
        the results dict also written to OUTPUT_DIR/results.json (``{"model_name_or_path", "tasks": {name: ...}}``).
    """
    from transformers import AutoModel

    config.check()
    task_configs = config.task_configs()
    accelerator = make_accelerator()
    model_config = load_model_config(config)
    tokenizer = load_checkpoint_tokenizer(config)
    encoder = load_pretrained(AutoModel, config, model_config).to(accelerator.device)
    logger.info("loaded the encoder of %s (any LM head unused)", config.model_name_or_path)
    twin = (random_twin(model_config, config.seed, AutoModel).to(accelerator.device)
            if config.random_baseline else None)
    rows = {}
    for task_config in task_configs:
        task = load_task(task_config)
        curve_sizes(config.train_sizes, task)  # a size the task cannot give is refused before any work
        length = task.max_seq_length or config.max_seq_length
        accelerator.print(f"probe {task.name}: {len(task.train)} train / {len(task.validation)} validation / "
                          f"{len(task.test)} {task.report_split} examples, {config.probe.pooling} pooling")
        row = {"metrics": task.metrics, "split": task.report_split, "problem_type": task.problem_type,
               "kind": task.kind, "fingerprint": task.fingerprint()}
        curves = {}
        for key, model, weights in (("probe", encoder, "pretrained"), ("random_probe", twin, f"random-seed{config.seed}")):
            if model is None:
                continue
            start = time.perf_counter()
            path = _features_path(config, task, weights, length, tokenizer)
            features = model_features(model, tokenizer, task, config.probe, length, accelerator, path)
            row[key] = {**probe_features(features, task, config.probe), "seconds": time.perf_counter() - start,
                        "world_size": accelerator.num_processes}
            if config.train_sizes:
                curves[key] = probe_curve(probed_layer(features, row[key]), task, config.probe, config.train_sizes,
                                          config.curve_seeds)
            layer = f"layer {row[key]['layer']} chosen on validation, " if "layer" in row[key] else ""
            metric, knn, shape = row[key]["metric"], row[key].get("knn"), row[key].get("geometry")
            accelerator.print(f"  {weights}: {metric} {row[key]['test'][metric]:.4f} on {task.report_split} ({layer}"
                              f"l2={row[key]['l2']:g}, {row[key]['seconds']:.1f} s)"
                              + (f"; kNN {knn['test'][metric]:.4f} (k={knn['k']}); uniformity "
                                 f"{shape['uniformity']:.3f}" if knn else "")
                              + (f", alignment {shape['alignment']:.3f}" if shape and shape["alignment"] is not None
                                 else ""))
        if config.train_sizes and config.tfidf_baseline:
            curves |= baseline_curves(task, config.train_sizes, config.curve_seeds)
        if curves:
            row["curves"] = curves
        rows[task.name] = row
    return record_results(config, accelerator, rows)
