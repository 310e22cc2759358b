"""The embedding space itself, without training anything on it: a k-nearest-neighbour score and alignment /
uniformity (Wang & Isola 2020, "Understanding Contrastive Representation Learning through Alignment and Uniformity
on the Hypersphere").

Embeddings are L2-normalised first (cosine geometry, as sentence-embedding users compare them).

- kNN score: each validation / test example takes the label of its k most cosine-similar training examples (majority
  vote, ties to the most similar; the mean for regression); k is chosen on validation from ``K_GRID``; the test
  score is reported with the task's metrics. No parameter is fitted: what it measures is whether neighbours in the
  space share labels.
- alignment = E ||f(x) - f(x+)||^2 over positive pairs (here: pairs of the reported split with the same label;
  lower is better, 0 when such pairs coincide);
  uniformity = log E exp(-2 ||f(x) - f(y)||^2) over all pairs of the reported split (lower is better: spread over the
  sphere; 0 when every embedding is the same, -4 for orthonormal ones).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sslnlp.evaluation.metrics import compute_metrics

K_GRID = (1, 5, 10, 20, 50)
MAX_PAIRS_EXAMPLES = 4000  # alignment / uniformity on at most this many examples (a seeded sample): O(n^2) pairs


def normalised(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(features.float(), dim=-1)


def knn_predictions(train: torch.Tensor, train_labels: torch.Tensor, queries: torch.Tensor, k: int,
                    num_classes: int | None, chunk: int = 1024) -> torch.Tensor:
    """Predicted labels (classes, or means for regression when ``num_classes`` is None) of ``queries`` from their k
    most cosine-similar ``train`` rows (all normalised)."""
    predictions = []
    for start in range(0, len(queries), chunk):
        similarity = queries[start: start + chunk] @ train.T
        top = similarity.topk(min(k, len(train)), dim=-1)
        neighbours = train_labels[top.indices]
        if num_classes is None:
            predictions.append(neighbours.float().mean(-1))
            continue
        votes = F.one_hot(neighbours, num_classes).float().sum(1)
        # ties: a tiny bonus decreasing with rank makes the most similar neighbour's class win
        votes += F.one_hot(neighbours, num_classes).float().mul(
            torch.linspace(1e-3, 1e-6, neighbours.shape[1]).view(1, -1, 1)).sum(1)
        predictions.append(votes.argmax(-1))
    return torch.cat(predictions)


def knn_score(features: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], metrics: list[str],
              num_classes: int | None) -> dict:
    """k chosen on validation (the first metric; ties keep the smaller k), test scored with every metric.

    Returns: ``{"k", "validation": {metric: value}, "test": {...}, "grid": [{"k", metric}]}``.
    """
    embedded = {split: normalised(values) for split, values in features.items()}
    best, grid = None, []
    for k in K_GRID:
        if k > len(embedded["train"]):
            break
        validation = compute_metrics(metrics, knn_predictions(embedded["train"], labels["train"], embedded["validation"],
                                                              k, num_classes), labels["validation"])
        grid.append({"k": k, metrics[0]: validation[metrics[0]]})
        if best is None or validation[metrics[0]] > best[1][metrics[0]]:
            best = (k, validation)
    k, validation = best
    test = compute_metrics(metrics, knn_predictions(embedded["train"], labels["train"], embedded["test"], k, num_classes),
                           labels["test"])
    return {"k": k, "validation": validation, "test": test, "grid": grid}


def uniformity(embeddings: torch.Tensor, t: float = 2.0) -> float:
    """log E_{i != j} exp(-t ||e_i - e_j||^2) of normalised embeddings."""
    squared = torch.cdist(embeddings.double(), embeddings.double()).pow(2)
    off_diagonal = ~torch.eye(len(embeddings), dtype=torch.bool)
    return float(torch.logsumexp(-t * squared[off_diagonal], 0) - math.log(int(off_diagonal.sum())))


def alignment(embeddings: torch.Tensor, labels: torch.Tensor, alpha: float = 2.0) -> float | None:
    """E ||e_i - e_j||^alpha over pairs i != j with the same label (None when no two examples share one)."""
    distances = torch.cdist(embeddings.double(), embeddings.double()).pow(alpha)
    same = (labels.view(-1, 1) == labels.view(1, -1)) & ~torch.eye(len(labels), dtype=torch.bool)
    return float(distances[same].mean()) if bool(same.any()) else None


def geometry(features: torch.Tensor, labels: torch.Tensor | None, seed: int = 0) -> dict:
    """Alignment (same-label pairs; classification only) and uniformity of one split's embeddings."""
    embeddings = normalised(features)
    if len(embeddings) > MAX_PAIRS_EXAMPLES:
        keep = torch.randperm(len(embeddings), generator=torch.Generator().manual_seed(seed))[:MAX_PAIRS_EXAMPLES]
        embeddings = embeddings[keep]
        labels = labels[keep] if labels is not None else None
    return {"alignment": alignment(embeddings, labels) if labels is not None else None,
            "uniformity": uniformity(embeddings), "examples": len(embeddings)}
