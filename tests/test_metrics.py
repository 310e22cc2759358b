"""Metrics (sslnlp/evaluation/metrics.py) against hand-computed values and, when scikit-learn is installed, against
scikit-learn / scipy, the field's reference implementations.

    python -m pytest tests/test_metrics.py -q
"""

import math
import random

import pytest

from sslnlp.evaluation.metrics import (
    accuracy,
    average_ranks,
    compute_metrics,
    f1,
    macro_f1,
    matthews_correlation,
    pearson,
    spearman,
)


def test_binary_metrics_match_hand_computed_values():
    predictions = [1, 1, 1, 1, 0, 0, 0, 0]
    labels = [1, 1, 0, 0, 1, 0, 0, 0]  # TP 2, FP 2, FN 1, TN 3
    assert accuracy(predictions, labels) == pytest.approx(5 / 8)
    assert f1(predictions, labels) == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))
    assert matthews_correlation(predictions, labels) == pytest.approx((2 * 3 - 2 * 1) / math.sqrt(4 * 3 * 5 * 4))
    assert matthews_correlation([1, 1, 1], [0, 1, 1]) == 0.0  # undefined (constant predictions): 0
    assert f1([0, 0], [0, 0]) == 0.0


def test_multiclass_metrics_match_hand_computed_values():
    labels = [0, 0, 1, 1, 2, 2]
    predictions = [0, 1, 1, 1, 2, 0]
    assert accuracy(predictions, labels) == pytest.approx(4 / 6)
    # per class F1: 0 -> 2/(2+1+1), 1 -> 4/(4+1), 2 -> 2/(2+1)
    assert macro_f1(predictions, labels) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # confusion rows [1 1 0] [0 2 0] [1 0 1]: c=4, s=6, t=(2,2,2), p=(2,3,1)
    assert matthews_correlation(predictions, labels) == pytest.approx((4 * 6 - 12) / math.sqrt((36 - 14) * (36 - 12)))
    assert matthews_correlation(labels, labels) == pytest.approx(1.0)


def test_correlations_match_hand_computed_values_with_ties():
    assert pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / math.sqrt(5 * 26))
    assert average_ranks([3, 1, 2, 2]).tolist() == [4.0, 1.0, 2.5, 2.5]
    # ranks (1, 2.5, 2.5, 4) and (1, 2, 3.5, 3.5): 3.75 / sqrt(4.5 * 4.5)
    assert spearman([1, 2, 2, 3], [10, 20, 30, 30]) == pytest.approx(3.75 / 4.5)
    assert spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0


@pytest.mark.filterwarnings("ignore:A single label was found")  # sklearn's note on one-class inputs
def test_metrics_match_scikit_learn_and_scipy_where_defined():
    """Ours equal the reference implementations on random labels (2-5 classes, one class only, constant
    predictions) and on continuous and heavily tied scores; where those raise or return NaN (a constant side of a
    correlation, no examples) ours return 0 by design and are not compared."""
    metrics = pytest.importorskip("sklearn.metrics")
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    for trial in range(200):
        count, classes = rng.randint(2, 200), rng.choice([1, 2, 2, 3, 5])
        labels = [rng.randrange(classes) for _ in range(count)]
        predictions = [label if rng.random() < 0.6 else rng.randrange(classes) for label in labels]
        if trial % 10 == 0:
            predictions = [predictions[0]] * count  # constant predictions
        ours = compute_metrics(["accuracy", "macro_f1", "matthews_correlation"], predictions, labels)
        assert ours["accuracy"] == pytest.approx(metrics.accuracy_score(labels, predictions), abs=1e-12)
        assert ours["macro_f1"] == pytest.approx(
            metrics.f1_score(labels, predictions, average="macro", zero_division=0.0), abs=1e-12)
        assert ours["matthews_correlation"] == pytest.approx(metrics.matthews_corrcoef(labels, predictions), abs=1e-12)
        if classes <= 2:
            assert f1(predictions, labels) == pytest.approx(
                metrics.f1_score(labels, predictions, pos_label=1, zero_division=0.0), abs=1e-12)

        x = [rng.gauss(0, 1) for _ in range(count)]
        y = [value + rng.gauss(0, 1) for value in x]
        for first, second in ((x, y), ([round(v) for v in x], [round(v) for v in y])):  # continuous, then tied
            if len(set(first)) > 1 and len(set(second)) > 1:
                assert pearson(first, second) == pytest.approx(stats.pearsonr(first, second).statistic, abs=1e-12)
                assert spearman(first, second) == pytest.approx(stats.spearmanr(first, second).statistic, abs=1e-12)
