"""Embedding-space scores (sslnlp.evaluation.geometry): kNN classification and regression, alignment, uniformity, on vectors
whose answers are known exactly."""

import math

import pytest
import torch

from sslnlp.evaluation.geometry import alignment, geometry, knn_predictions, knn_score, uniformity


def test_uniformity_and_alignment_have_their_known_values():
    identical = torch.ones(5, 3)
    assert uniformity(torch.nn.functional.normalize(identical, dim=-1)) == pytest.approx(0.0)  # collapsed: the maximum
    orthonormal = torch.eye(6)  # every pair at squared distance 2: log exp(-2 x 2) = -4
    assert uniformity(orthonormal) == pytest.approx(-4.0)
    assert alignment(orthonormal, torch.tensor([0, 0, 1, 1, 2, 2])) == pytest.approx(2.0)
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # class 0: antipodal, class 1: equal
    assert alignment(opposite, torch.tensor([0, 0, 1, 1])) == pytest.approx((4 + 4 + 0 + 0) / 4)
    assert alignment(orthonormal[:3], torch.tensor([0, 1, 2])) is None  # no two examples share a label
    shape = geometry(3 * torch.eye(6), torch.tensor([0, 0, 1, 1, 2, 2]))  # normalised first: scale does not matter
    assert shape == {"alignment": pytest.approx(2.0), "uniformity": pytest.approx(-4.0), "examples": 6}


def test_knn_votes_by_cosine_neighbours_and_breaks_ties_by_the_nearest():
    angles = torch.tensor([0.0, 0.1, 0.2, 0.3, 3.0, 3.1, 3.2])
    train = torch.stack([torch.cos(angles), torch.sin(angles)], -1)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1])  # one class-1 example sits inside class 0's arc
    query = torch.tensor([[math.cos(0.29), math.sin(0.29)]])  # nearest: the odd class-1 example
    assert knn_predictions(train, labels, query, 1, 2).tolist() == [1]
    assert knn_predictions(train, labels, query, 3, 2).tolist() == [0]  # two of three neighbours are class 0
    assert knn_predictions(train, labels, query, 2, 2).tolist() == [1]  # a 1-1 tie goes to the nearest
    assert knn_predictions(train, labels.float(), query, 3, None).tolist() == [pytest.approx(1 / 3)]  # regression


def test_knn_score_chooses_k_on_validation_and_reports_test():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=generator) * 3

    def split(count):
        labels = torch.arange(count) % 3
        return centres[labels] + torch.randn(count, 16, generator=generator), labels

    features, labels = {}, {}
    for name, count in (("train", 300), ("validation", 60), ("test", 60)):
        features[name], labels[name] = split(count)
    result = knn_score(features, labels, ["accuracy", "macro_f1"], 3)
    assert result["test"]["accuracy"] > 0.95 and set(result["test"]) == {"accuracy", "macro_f1"}
    assert [g["k"] for g in result["grid"]] == [1, 5, 10, 20, 50]
    assert result["k"] == max(result["grid"], key=lambda g: (g["accuracy"], -g["k"]))["k"]
    shuffled = {split: labels[split][torch.randperm(len(labels[split]), generator=generator)] for split in labels}
    assert knn_score(features, shuffled, ["accuracy"], 3)["test"]["accuracy"] < 0.6  # labels unrelated to the space
