"""Masked language modelling (BERT, RoBERTa, ModernBERT): predict chosen tokens from both sides.

    objective: {name: mlm, mlm_probability: 0.3, masking: whole_word}

Token, whole-word or span masking with the 80/10/10 replacement (sslnlp.data.masking); the output head runs on the masked
positions only when ``objective.sparse_prediction`` (sslnlp.models.modeling.SparseMaskedLMHead). Exports an
``AutoModelForMaskedLM`` that ``pipeline("fill-mask")`` runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from sslnlp.config import ConfigError, ObjectiveConfig, option
from sslnlp.data.masking import MASKING_MODES, MaskedLanguageModelingCollator
from sslnlp.models.modeling import SparseMaskedLMHead, build_model, check_head, dense_loss, flops_per_token
from sslnlp.objectives.base import Objective, ObjectiveLoss, register_objective
from sslnlp.data.packing import BlockLayout


@dataclass
class MaskedLanguageModelingConfig(ObjectiveConfig):
    name: str = option("mlm", "Masked language modelling.")
    mlm_probability: float = option(0.15, "Fraction of tokens to predict.")
    mask_replace_probability: float = option(0.8, "Of the chosen tokens, fraction replaced by the mask token.")
    random_replace_probability: float = option(0.1, "Of the chosen tokens, fraction replaced by a random token.")
    masking: str = option("token", "'token', 'whole_word' or 'span' (SpanBERT) masking.")
    fixed_mask_count: bool = option(False, "Mask exactly round(p x tokens) per sequence (static shapes).")
    mean_span_length: float = option(3.8, "Span masking: mean span length in words.")
    max_span_length: int = option(10, "Span masking: longest span in words.")
    sparse_prediction: bool = option(True, "Run the output head on the masked positions only (faster; ELECTRA's "
                                           "generator always does).")
    eval_mlm_probability: float = option(0.15, "Masking rate of held-out evaluation (fixed, so runs compare).")

    def check(self) -> None:
        if self.masking not in MASKING_MODES:
            raise ConfigError(f"objective.masking={self.masking!r} is not valid; choose one of {', '.join(MASKING_MODES)}")
        for key in ("mlm_probability", "eval_mlm_probability"):
            if not 0 < getattr(self, key) < 1:
                raise ConfigError(f"objective.{key}={getattr(self, key)} must be in (0, 1)")
        if self.fixed_mask_count and self.masking != "token":
            raise ConfigError("objective.fixed_mask_count works with objective.masking='token' only")

    def collator_options(self) -> dict:
        return {key: getattr(self, key) for key in ("mlm_probability", "mask_replace_probability",
                                                    "random_replace_probability", "masking", "fixed_mask_count",
                                                    "mean_span_length", "max_span_length")}


@register_objective
class MaskedLanguageModeling(Objective):
    name = "mlm"
    is_default = True  # what a config without objective.name trains
    Config = MaskedLanguageModelingConfig
    encoder = True
    pipeline_tag = "fill-mask"
    reports_perplexity = True
    loss_weights = {"mlm": 1.0}
    supports_attention_within_documents = True

    def __init__(self, config, model_options=None):
        super().__init__(config, model_options)
        self.sparse_head: SparseMaskedLMHead | None = None

    def block_layout(self, tokenizer):
        return BlockLayout.encoder(tokenizer, word_starts=self.config.masking != "token")

    def check_model_config(self, model_config) -> None:
        from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

        check_head(model_config, MODEL_FOR_MASKED_LM_MAPPING_NAMES, "masked-LM (mlm)",
                   "an encoder such as bert, roberta or modernbert for objective.name='mlm'")
        self.check_document_attention(model_config)

    def build_model(self, model_config):
        from transformers import AutoModelForMaskedLM

        model = build_model(self.model_options, model_config, AutoModelForMaskedLM, head="masked-LM")
        if self.config.sparse_prediction:
            self.sparse_head = SparseMaskedLMHead(model)
        return model

    def build_collator(self, tokenizer, *, seed: int, evaluation=None):
        if evaluation is not None:  # a fixed rate (and the standard 80/10/10 token masking) so runs compare
            collator = MaskedLanguageModelingCollator.from_tokenizer(tokenizer, seed=seed,
                                                                     mlm_probability=self.config.eval_mlm_probability)
        else:
            collator = MaskedLanguageModelingCollator.from_tokenizer(tokenizer, seed=seed,
                                                                     **self.config.collator_options())
        return self.document_collator(collator, tokenizer)

    def count(self, batch: dict) -> dict[str, int]:
        return {"mlm": int((batch["labels"] != -100).sum())}

    def loss(self, model, batch: dict, with_metrics: bool = False) -> ObjectiveLoss:
        if self.sparse_head is not None:
            loss_sum, logits, targets = self.sparse_head.forward(model, batch)
        else:
            loss_sum, logits, targets = dense_loss(model, batch)
        metrics = {"accuracy": ((logits.argmax(-1) == targets).sum(), "mlm")} if with_metrics else {}
        return ObjectiveLoss({"mlm": loss_sum}, metrics)

    def flops_per_token(self, model_config, sequence_length: int) -> float:
        predicted = self.config.mlm_probability if self.sparse_head is not None else 1.0
        return flops_per_token(model_config, sequence_length, predicted)

    def close(self) -> None:
        if self.sparse_head is not None:
            self.sparse_head.handle.remove()
            self.sparse_head = None

    def describe(self) -> str:
        config = self.config
        return (f"masked LM: {config.mlm_probability:g} of tokens predicted, {config.masking} masking, "
                f"{config.mask_replace_probability:g} [MASK] / {config.random_replace_probability:g} random")

    def card_text(self) -> str:
        return "masked language model (predicts hidden tokens from both sides)"

    def usage(self, repo_id: str, revision_argument: str, mask_token: str) -> list[str]:
        return ["from transformers import pipeline", "",
                f'fill = pipeline("fill-mask", model="{repo_id}"{revision_argument})',
                f'print(fill("The goal of life is {mask_token}."))', "",
                "# features or fine-tuning: AutoModel / AutoModelForSequenceClassification",
                "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
                f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}"{revision_argument})',
                f'model = AutoModelForSequenceClassification.from_pretrained("{repo_id}"{revision_argument}, num_labels=2)']
