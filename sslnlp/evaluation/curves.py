"""Learning curves: a checkpoint's score against the number of labelled training examples, beside its random-weight
twin and a TF-IDF + logistic regression baseline scored on the very same subsets (ULMFiT's Figure 3: where
pretraining pays is where labels are few).

    sslnlp probe recipes/evaluate/sst2.yaml model_name_or_path=runs/tiny-cpu "train_sizes=[64, 256, 1024, all]"
    sslnlp finetune recipes/evaluate/sst2.yaml model_name_or_path=runs/tiny-cpu "train_sizes=[64, 256]" curve_seeds=[0,1,2]

Subsets come from the task's train split only (validation and test stay whole, so every point is scored on the same
examples). For each seed the train split is put in one *stratified order* (one example of every class first, then
always the class furthest below its share), and a size takes a prefix of it: subsets of one seed are nested (the
256 hold the 64), every prefix is stratified to within one example per class, and a new seed draws a new order.
Each point reports the median, min and max over seeds, with every seed's value.
"""

from __future__ import annotations

import dataclasses
import random
import statistics

from sslnlp.evaluation.metrics import compute_metrics
from sslnlp.evaluation.tasks import LabelledTask, TaskError

ALL = "all"
TFIDF_C_GRID = (0.1, 1.0, 10.0, 100.0)  # inverse L2 strengths tried; the best on validation is reported
TFIDF_RIDGE_GRID = (0.01, 0.1, 1.0, 10.0)  # regression: ridge strengths


def curve_sizes(sizes: list, task: LabelledTask) -> list[int]:
    """The learning curve's sizes as numbers of training examples, ascending ('all': the whole train split).

    A size larger than the train split, or (classification) smaller than its number of classes, is a one-line
    error naming ``train_sizes`` and the task."""
    available = len(task.train)
    resolved = []
    for size in sizes:
        if size == ALL:
            resolved.append(available)
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise TaskError(f"train_sizes: {size!r} is not a size; give positive integers or 'all'")
        if size > available:
            raise TaskError(f"train_sizes: {size} is larger than task {task.name!r}'s train split ({available} "
                            "examples); use a smaller size or 'all'")
        if task.stratified and size < task.num_labels:
            raise TaskError(f"train_sizes: {size} is smaller than task {task.name!r}'s {task.num_labels} classes; a "
                            "stratified subset needs at least one example of each")
        resolved.append(size)
    return sorted(set(resolved))


def stratified_order(labels: list, seed: int, classification: bool = True) -> list[int]:
    """Indices of ``labels`` in an order whose every prefix is a stratified sample (one of each class first, then the
    class furthest below its share of the split), drawn from ``seed``; regression: a seeded shuffle."""
    rng = random.Random(seed)
    order = list(range(len(labels)))
    rng.shuffle(order)
    if not classification:
        return order
    by_class: dict = {}
    for index in order:
        by_class.setdefault(labels[index], []).append(index)
    classes = sorted(by_class)
    rng.shuffle(classes)
    share = {label: len(by_class[label]) / len(labels) for label in classes}
    result = [by_class[label][0] for label in classes]
    taken = {label: 1 for label in classes}
    while len(result) < len(labels):
        position = len(result) + 1
        label = max((label for label in classes if taken[label] < len(by_class[label])),
                    key=lambda label: share[label] * position - taken[label])
        result.append(by_class[label][taken[label]])
        taken[label] += 1
    return result


def subset_indices(task: LabelledTask, size: int, seed: int) -> list[int]:
    """The ``size`` training examples of ``seed``'s stratified order, in the split's order."""
    order = stratified_order([e.label for e in task.train], seed, task.stratified)
    return sorted(order[:size])


def task_subset(task: LabelledTask, indices: list[int]) -> LabelledTask:
    """The task with its train split reduced to ``indices`` (validation and test unchanged)."""
    return dataclasses.replace(task, train=[task.train[i] for i in indices], cache={})


def summarize_point(size: int, seeds: list[int], values: list[dict], metrics: list[str]) -> dict:
    """One point of a curve: every seed's scores and the median, min and max of each metric."""
    point = {"size": size, "seeds": list(seeds), "values": values, "median": {}, "min": {}, "max": {}}
    for metric in metrics:
        scores = [value[metric] for value in values]
        point["median"][metric] = statistics.median(scores)
        point["min"][metric], point["max"][metric] = min(scores), max(scores)
    return point


def run_curve(task: LabelledTask, sizes: list, seeds: list[int], score) -> list[dict]:
    """The curve's points: ``score(subset_task, indices, seed) -> {metric: value}`` at every size and seed
    (``indices``: the subset's rows of the train split; at 'all' every seed has the whole split, and the seed varies
    only what the scorer draws from it)."""
    points = []
    for size in curve_sizes(sizes, task):
        values = []
        for seed in seeds:
            indices = subset_indices(task, size, seed)
            values.append(score(task_subset(task, indices), indices, seed))
        points.append(summarize_point(size, seeds, values, task.metrics))
    return points


# ------------------------------------------------------------------------------------------ the TF-IDF baseline


def baseline_curves(task: LabelledTask, sizes: list, seeds: list[int]) -> dict[str, list[dict]]:
    """``{"tfidf": points}`` on the curve's subsets; none for a token task (a word has no document to weigh)."""
    if task.is_token_level:
        return {}
    return {"tfidf": run_curve(task, sizes, seeds, lambda subset, indices, seed: tfidf_score(subset)["test"])}


def tfidf_score(task: LabelledTask) -> dict:
    """TF-IDF of word 1-2-grams (fitted on the train split) + logistic regression (ridge for regression), the
    strength chosen on validation; returns ``{"C" or "alpha", "validation", "test"}`` ({metric: value})."""
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression, Ridge
    except ImportError:
        raise TaskError('the TF-IDF baseline needs scikit-learn: pip install "sslnlp[baselines]", or set '
                        "tfidf_baseline=false") from None
    import torch

    def texts(split):
        return [e.text if e.text_pair is None else f"{e.text} {e.text_pair}" for e in getattr(task, split)]

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    features = {"train": vectorizer.fit_transform(texts("train"))}
    features |= {split: vectorizer.transform(texts(split)) for split in ("validation", "test")}
    labels = {split: [e.label for e in getattr(task, split)] for split in ("train", "validation", "test")}
    regression = task.problem_type == "regression"
    best = None
    for strength in (TFIDF_RIDGE_GRID if regression else TFIDF_C_GRID):
        model = Ridge(alpha=strength) if regression else LogisticRegression(C=strength, max_iter=2000)
        model.fit(features["train"], labels["train"])
        scores = {}
        for split in ("validation", "test"):
            predicted = torch.tensor(model.predict(features[split]))
            gold = torch.tensor(labels[split], dtype=predicted.dtype if regression else torch.long)
            scores[split] = compute_metrics(task.metrics, predicted, gold)
        if best is None or scores["validation"][task.metrics[0]] > best[1]["validation"][task.metrics[0]]:
            best = (strength, scores)
    strength, scores = best
    return {"alpha" if regression else "C": strength, **scores}
