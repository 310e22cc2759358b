"""Objectives registered by the test suite, not by the package: proof that an objective plugs in from outside.

- ``random_token_detection``: a small objective written from scratch (docs/guides/adding-an-objective.md walks
  through it): 15% of the tokens are replaced by random tokens and a per-token two-way head says which were. Its
  model is transformers' AutoModelForTokenClassification, so the exported model loads with that class.
- ``mlm_nonfinite``: masked LM whose loss is NaN at chosen optimizer steps (``objective.nonfinite_steps``), to test
  how the loop skips, counts and bounds non-finite steps without a test-only code path in the package.

Import this module before the config loads (the test runner script ``sslnlp_with_test_objectives.py`` does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sslnlp.config import ConfigError, ObjectiveConfig, option
from sslnlp.data.masking import pad_token_id_of
from sslnlp.models.modeling import build_model, flops_per_token
from sslnlp.objectives import Objective, ObjectiveLoss, register_objective
from sslnlp.objectives.mlm import MaskedLanguageModeling, MaskedLanguageModelingConfig
from sslnlp.data.packing import BlockLayout


@dataclass
class RandomTokenDetectionConfig(ObjectiveConfig):
    name: str = option("random_token_detection", "Detect tokens replaced at random.")
    replace_probability: float = option(0.15, "Fraction of tokens replaced by a random token.")

    def check(self) -> None:
        if not 0 < self.replace_probability < 1:
            raise ConfigError(f"objective.replace_probability={self.replace_probability} must be in (0, 1)")


class RandomReplacementCollator:
    """input_ids [B, L] -> (corrupted input_ids, labels [B, L]: 1 replaced, 0 kept, -100 special or padding)."""

    def __init__(self, tokenizer, probability: float, seed: int):
        self.probability = probability
        self.special = torch.zeros(len(tokenizer), dtype=torch.bool)
        self.special[tokenizer.all_special_ids] = True
        self.vocabulary = torch.nonzero(~self.special).flatten()
        self.pad_token_id = pad_token_id_of(tokenizer)
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.generator.set_state(state["generator"])

    def __call__(self, batch: dict) -> dict:
        input_ids = batch["input_ids"].long()
        candidates = ~self.special[input_ids]
        if "attention_mask" in batch:
            candidates &= batch["attention_mask"].bool()
        chosen = candidates & (torch.rand(input_ids.shape, generator=self.generator) < self.probability)
        random_ids = self.vocabulary[torch.randint(len(self.vocabulary), input_ids.shape, generator=self.generator)]
        corrupted = torch.where(chosen, random_ids, input_ids)
        labels = torch.where(candidates, (corrupted != input_ids).long(), torch.full_like(input_ids, -100))
        out = {"input_ids": corrupted, "labels": labels}
        if "attention_mask" in batch:
            out["attention_mask"] = batch["attention_mask"].long()
        return out


@register_objective
class RandomTokenDetection(Objective):
    name = "random_token_detection"
    Config = RandomTokenDetectionConfig
    encoder = True  # an encoder tokenizer: [CLS] ... [SEP]
    pipeline_tag = "token-classification"
    loss_weights = {"detection": 1.0}

    def block_layout(self, tokenizer):
        return BlockLayout.encoder(tokenizer)

    def build_model(self, model_config):
        from transformers import AutoModelForTokenClassification

        model_config.num_labels = 2
        return build_model(self.model_options, model_config, AutoModelForTokenClassification)

    def build_collator(self, tokenizer, *, seed: int, evaluation=None):
        return RandomReplacementCollator(tokenizer, self.config.replace_probability, seed)

    def count(self, batch: dict) -> dict[str, int]:
        return {"detection": int((batch["labels"] != -100).sum())}

    def loss(self, model, batch: dict, with_metrics: bool = False) -> ObjectiveLoss:
        labels = batch["labels"]
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits  # [B, L, 2]
        keep = labels != -100
        loss_sum = F.cross_entropy(logits[keep].float(), labels[keep], reduction="sum")
        metrics = {"accuracy": ((logits[keep].argmax(-1) == labels[keep]).sum(), "detection")} if with_metrics else {}
        return ObjectiveLoss({"detection": loss_sum}, metrics)

    def flops_per_token(self, model_config, sequence_length: int) -> float:
        return flops_per_token(model_config, sequence_length, 0.0)

    def describe(self) -> str:
        return f"random-token detection: {self.config.replace_probability:g} of tokens replaced at random"


@dataclass
class NonFiniteMaskedLanguageModelingConfig(MaskedLanguageModelingConfig):
    name: str = option("mlm_nonfinite", "Masked LM with a NaN loss at chosen steps (tests only).")
    nonfinite_steps: list = option([], "Optimizer steps (1-based) whose loss is NaN.")


@register_objective
class NonFiniteMaskedLanguageModeling(MaskedLanguageModeling):
    name = "mlm_nonfinite"
    Config = NonFiniteMaskedLanguageModelingConfig

    def __init__(self, config, model_options=None):
        super().__init__(config, model_options)
        self.training_calls = 0  # one loss call per optimizer step (gradient_accumulation_steps=1)

    def loss(self, model, batch: dict, with_metrics: bool = False) -> ObjectiveLoss:
        output = super().loss(model, batch, with_metrics)
        if model.training:
            self.training_calls += 1
            if self.training_calls in self.config.nonfinite_steps:
                output.sums = {term: value * float("nan") for term, value in output.sums.items()}
        return output
