"""Next-token prediction (GPT-2, Llama and every other causal LM in transformers).

    objective: {name: clm}

Blocks are bare token runs with EOS after each document; position t predicts token t + 1. Exports an
``AutoModelForCausalLM`` that ``pipeline("text-generation")`` runs. With data.attention_within_documents each token
sees only the earlier tokens of its own document; the targets are unchanged (a document's EOS still predicts the
first token of the next: what follows an EOS, as in generation).
"""

from __future__ import annotations

from dataclasses import dataclass

from sslnlp.config import ObjectiveConfig, option
from sslnlp.data.masking import CausalLanguageModelingCollator
from sslnlp.models.modeling import build_model, check_head, dense_loss, flops_per_token
from sslnlp.objectives.base import Objective, ObjectiveLoss, register_objective
from sslnlp.data.packing import BlockLayout


@dataclass
class CausalLanguageModelingConfig(ObjectiveConfig):
    name: str = option("clm", "Next-token prediction (causal language modelling).")


@register_objective
class CausalLanguageModeling(Objective):
    name = "clm"
    Config = CausalLanguageModelingConfig
    encoder = False
    pipeline_tag = "text-generation"
    reports_perplexity = True
    loss_weights = {"clm": 1.0}
    supports_attention_within_documents = True

    def block_layout(self, tokenizer):
        return BlockLayout.decoder(tokenizer)

    def check_model_config(self, model_config) -> None:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        check_head(model_config, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, "causal-LM (clm)",
                   "a decoder such as gpt2 or llama for objective.name='clm'")
        self.check_document_attention(model_config)

    def build_model(self, model_config):
        from transformers import AutoModelForCausalLM

        return build_model(self.model_options, model_config, AutoModelForCausalLM, head="causal-LM")

    def build_collator(self, tokenizer, *, seed: int, evaluation=None):
        return self.document_collator(CausalLanguageModelingCollator.from_tokenizer(tokenizer), tokenizer)

    def count(self, batch: dict) -> dict[str, int]:
        return {"clm": int((batch["labels"][:, 1:] != -100).sum())}  # the first token of a block is never a target

    def loss(self, model, batch: dict, with_metrics: bool = False) -> ObjectiveLoss:
        loss_sum, logits, targets = dense_loss(model, batch, shift=True)
        metrics = {"accuracy": ((logits.argmax(-1) == targets).sum(), "clm")} if with_metrics else {}
        return ObjectiveLoss({"clm": loss_sum}, metrics)

    def flops_per_token(self, model_config, sequence_length: int) -> float:
        return flops_per_token(model_config, sequence_length, 1.0)

    def describe(self) -> str:
        return "next-token prediction"

    def card_text(self) -> str:
        return "causal language model (predicts the next token)"

    def usage(self, repo_id: str, revision_argument: str, mask_token: str) -> list[str]:
        return ["from transformers import pipeline", "",
                f'generate = pipeline("text-generation", model="{repo_id}"{revision_argument})',
                'print(generate("Once upon a time", max_new_tokens=40)[0]["generated_text"])']
