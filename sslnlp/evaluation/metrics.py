"""Classification and correlation metrics of the labelled tasks, in plain torch: accuracy, binary F1, macro F1,
Matthews correlation, Pearson, Spearman (``compute_metrics`` by name).

Each takes predictions and labels (lists, tensors or arrays) and returns a float. Where a value is undefined (no
examples, a constant side of a correlation, a class never predicted nor present) it is 0, never NaN or an error, so
a degenerate probe or seed still lands in the results table. On defined inputs they equal scikit-learn's
accuracy_score / f1_score / matthews_corrcoef and scipy's pearsonr / spearmanr to 1e-15
(tests/test_metrics.py checks it when scikit-learn is installed); we keep our own because those packages add
~200 MB and ~1 s of import for six short functions, and raise or return NaN on the undefined cases above.
"""

from __future__ import annotations

import torch


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


def entity_f1(predictions: list[list[int]], labels: list[list[int]], label_names: list[str]) -> float:
    """Micro F1 over whole entities of BIO-tagged sentences (seqeval's default: an entity counts when its type and
    both ends are right), each sentence a list of tag ids; 0 when no entity is predicted nor present."""
    try:
        from seqeval.metrics import f1_score
    except ImportError:
        raise ImportError('entity F1 of BIO-tagged tasks is computed by seqeval: pip install "sslnlp[tokens]"') from None
    names = [[label_names[i] for i in sentence] for sentence in labels]
    guesses = [[label_names[i] for i in sentence] for sentence in predictions]
    return float(f1_score(names, guesses, zero_division=0))


METRIC_FUNCTIONS = {"accuracy": accuracy, "f1": f1, "macro_f1": macro_f1, "matthews_correlation": matthews_correlation,
                    "pearson": pearson, "spearman": spearman}


def compute_metrics(names: list[str], predictions, labels, label_names: list[str] | None = None) -> dict[str, float]:
    """``{name: value}`` for each metric name (see METRIC_FUNCTIONS, and ``entity_f1``).

    Token tasks give ``predictions`` and ``labels`` as lists of sentences (lists of tag ids): entity F1 reads them
    whole (with ``label_names``); the other metrics score every word."""
    if isinstance(predictions, list) and predictions and isinstance(predictions[0], (list, tuple)):
        flat_predictions = [tag for sentence in predictions for tag in sentence]
        flat_labels = [tag for sentence in labels for tag in sentence]
        return {name: entity_f1(predictions, labels, label_names) if name == "entity_f1"
                else METRIC_FUNCTIONS[name](flat_predictions, flat_labels) for name in names}
    return {name: METRIC_FUNCTIONS[name](predictions, labels) for name in names}
