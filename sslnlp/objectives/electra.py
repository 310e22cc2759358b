"""Replaced-token detection (ELECTRA, Clark et al. 2020): a small generator fills the masked positions with sampled
tokens and the discriminator, the model we keep, says for every token whether it was replaced.

    objective: {name: electra, generator_size: 0.25, discriminator_weight: 50}

- Masking as in the paper's code: 15% of the tokens, 85% of those shown as [MASK], the rest unchanged (no random
  replacement: the generator's samples are the replacements). Every MLM masking mode works (token, whole_word, span).
- Generator: the discriminator's architecture, ``generator_size`` x its hidden size (heads and MLP scaled alike) and
  ``generator_layers`` x its layers, or ``generator_config_overrides``; trained as a masked LM with sslnlp's sparse
  head (the vocabulary projection runs on the masked positions only).
- Tied embeddings: the generator uses the discriminator's embedding module (token, position and token-type tables
  and their norm). ELECTRA-style models have an ``embedding_size`` apart from the hidden size, so a narrower
  generator shares them through its own projection, as in the paper; families whose embeddings are as wide as the
  hidden size (BERT, RoBERTa, ModernBERT) share them when the generator keeps the width (shrink its depth with
  ``generator_layers``, as DeBERTa-v3 does); a narrower generator there is refused with a one-line error.
- Replacements are sampled from the generator's softmax at temperature ``temperature`` without gradient; a token
  counts as replaced only when the sample differs from the original.
- Loss: generator MLM loss per masked token + ``discriminator_weight`` x binary cross-entropy per scored token
  (every token of the block, or only the masked positions with ``discriminator_positions: masked``).
- data.attention_within_documents: the generator and the discriminator both attend within the documents of the
  uncorrupted blocks (a sampled [SEP] moves no boundary).
- Export: the discriminator in ``output_dir`` (``ElectraForPreTraining`` for model_type electra, whose replaced-token
  scores can be used directly; a one-logit token classifier for other families), the generator as a fill-mask model
  in ``output_dir/generator``. ``AutoModel`` and ``AutoModelForSequenceClassification`` load the discriminator.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sslnlp.config import ConfigError, option
from sslnlp.data.masking import MaskedLanguageModelingCollator
from sslnlp.models.modeling import ModelError, SparseMaskedLMHead, build_model, check_head, flops_per_token, model_inputs
from sslnlp.objectives.base import Objective, ObjectiveLoss, register_objective
from sslnlp.objectives.mlm import MaskedLanguageModelingConfig
from sslnlp.data.packing import BlockLayout

logger = logging.getLogger(__name__)
DISCRIMINATOR_POSITIONS = ("all", "masked")


@dataclass
class ElectraObjectiveConfig(MaskedLanguageModelingConfig):
    name: str = option("electra", "Replaced-token detection (ELECTRA).")
    mlm_probability: float = option(0.15, "Fraction of tokens masked for the generator (the paper: 0.15).")
    mask_replace_probability: float = option(0.85, "Of the masked tokens, fraction shown as [MASK] to the generator "
                                                   "(the paper's code: 0.85; the rest unchanged).")
    random_replace_probability: float = option(0.0, "Of the masked tokens, fraction replaced by a random token "
                                                    "(the paper: 0).")
    generator_size: float = option(0.25, "Generator hidden size as a fraction of the discriminator's (the paper: "
                                         "1/4 for Small, 1/3 for Base); heads and MLP width scale with it.")
    generator_layers: float = option(1.0, "Generator layers as a fraction of the discriminator's.")
    generator_config_overrides: dict = option({}, "Explicit generator config values (hidden_size, "
                                                  "num_hidden_layers, ...), applied last.")
    discriminator_weight: float = option(50.0, "Weight of the discriminator loss (the paper: 50).")
    generator_weight: float = option(1.0, "Weight of the generator's masked-LM loss.")
    temperature: float = option(1.0, "Sampling temperature of the generator's replacements.")
    discriminator_positions: str = option("all", "Tokens the discriminator is scored on: 'all' (the paper) or "
                                                 "'masked' (only the masked positions).")

    def check(self) -> None:
        super().check()
        if not 0 < self.generator_size <= 1 or not 0 < self.generator_layers <= 1:
            raise ConfigError("objective.generator_size and objective.generator_layers must be in (0, 1]")
        if self.discriminator_weight < 0 or self.generator_weight < 0 or self.temperature <= 0:
            raise ConfigError("objective.discriminator_weight and objective.generator_weight must be >= 0 and "
                              "objective.temperature > 0")
        if self.discriminator_positions not in DISCRIMINATOR_POSITIONS:
            raise ConfigError(f"objective.discriminator_positions={self.discriminator_positions!r} is not valid; "
                              f"choose one of {', '.join(DISCRIMINATOR_POSITIONS)}")


def generator_config(discriminator_config, options: ElectraObjectiveConfig):
    """The generator's transformers config: the discriminator's, narrower and/or shallower (or explicit values)."""
    values = discriminator_config.to_dict()
    hidden = values.get("hidden_size")
    if hidden is None:
        raise ModelError(f"model type {discriminator_config.model_type!r} has no hidden_size; give the generator "
                         "explicitly with objective.generator_config_overrides")
    if options.generator_size < 1:
        width = max(16, round(hidden * options.generator_size))
        head_size = hidden // values.get("num_attention_heads", 1)
        values.update(hidden_size=width, num_attention_heads=max(1, width // head_size))
        if values.get("intermediate_size"):
            values["intermediate_size"] = max(16, round(values["intermediate_size"] * options.generator_size))
    if values.get("num_hidden_layers"):
        values["num_hidden_layers"] = max(1, round(values["num_hidden_layers"] * options.generator_layers))
    values.update(options.generator_config_overrides)
    if "layer_types" in values and len(values["layer_types"] or []) != values.get("num_hidden_layers"):
        del values["layer_types"]  # per-layer attention kinds (ModernBERT): derived again for the new depth
    return type(discriminator_config).from_dict(values)


class GeneratorAndDiscriminator(torch.nn.Module):
    """The two models ELECTRA trains, as one module so that Accelerate prepares, checkpoints and (under DDP)
    synchronises them together; ``forward`` runs the whole objective and returns its sums."""

    def __init__(self, generator, discriminator, options: ElectraObjectiveConfig):
        super().__init__()
        self.generator = generator
        self.discriminator = discriminator
        self.options = options
        self.sparse_head = SparseMaskedLMHead(generator)

    def forward(self, input_ids, labels, attention_mask=None, **inputs) -> dict:
        batch = {"input_ids": input_ids, "labels": labels, **inputs}
        if attention_mask is not None:
            batch["attention_mask"] = attention_mask
        generator_sum, logits, targets = self.sparse_head.forward(self.generator, batch)  # logits [N, V]
        positions = torch.nonzero(labels.reshape(-1) != -100).flatten()  # [N], the masked positions
        with torch.no_grad():
            sampled = sample_replacements(logits, self.options.temperature)  # [N]
        corrupted, replaced = replace_tokens(input_ids, positions, targets, sampled)
        discriminator_batch = {"input_ids": corrupted, **inputs}
        if attention_mask is not None:
            discriminator_batch["attention_mask"] = attention_mask
        scores = self.discriminator(**model_inputs(self.discriminator, discriminator_batch)).logits
        scores = scores.reshape(input_ids.shape)  # [B, L] (a token classifier gives [B, L, 1])
        scored = scored_positions(input_ids, attention_mask, positions, self.options.discriminator_positions)
        discriminator_sum = F.binary_cross_entropy_with_logits(scores[scored].float(), replaced[scored].float(),
                                                               reduction="sum")
        return {"generator_loss": generator_sum, "discriminator_loss": discriminator_sum,
                "generator_correct": (logits.argmax(-1) == targets).sum(),
                "discriminator_correct": ((scores[scored] > 0) == replaced[scored]).sum(),
                "replaced": (sampled != targets).sum()}


def sample_replacements(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """One token per row of ``logits`` [N, V], drawn from softmax(logits / temperature) by inverting the cumulative
    distribution with one uniform draw per row (the global RNG: Accelerate restores it on resume, so a resumed run
    draws what the uninterrupted one did). torch.multinomial draws V exponentials per row: 120-160 ms for
    600 x 8,192 logits on one core, where this takes 18 ms."""
    if len(logits) == 0:
        return torch.zeros(0, dtype=torch.long, device=logits.device)
    probabilities = torch.softmax(logits.float() / temperature, dim=-1)
    cumulative = probabilities.cumsum(-1)  # [N, V]
    uniform = torch.rand(len(logits), 1, device=logits.device) * cumulative[:, -1:]
    return torch.searchsorted(cumulative, uniform, right=True).squeeze(1).clamp_(max=logits.shape[-1] - 1)


def replace_tokens(input_ids: torch.Tensor, positions: torch.Tensor, originals: torch.Tensor,
                   sampled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(discriminator input [B, L]: the masked positions hold the samples; labels [B, L] bool: True exactly where
    the sample differs from the original token, False everywhere else)."""
    corrupted = input_ids.clone().reshape(-1)
    corrupted[positions] = sampled
    replaced = torch.zeros_like(corrupted, dtype=torch.bool)
    replaced[positions] = sampled != originals
    return corrupted.reshape(input_ids.shape), replaced.reshape(input_ids.shape)


def scored_positions(input_ids, attention_mask, masked_positions, which: str) -> torch.Tensor:
    """Bool [B, L]: the tokens the discriminator is scored on (every non-padding token, or the masked ones)."""
    if which == "masked":
        scored = torch.zeros(input_ids.numel(), dtype=torch.bool, device=input_ids.device)
        scored[masked_positions] = True
        return scored.reshape(input_ids.shape)
    if attention_mask is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    return attention_mask.bool()


def tie_embeddings(generator, discriminator) -> None:
    """The generator uses the discriminator's embedding module; its output layer stays tied to the (shared) token
    embeddings. One-line error when the two cannot share (different widths without an embedding projection)."""
    shared = discriminator.base_model.embeddings
    own = generator.base_model.embeddings
    own_shapes = {name: tuple(p.shape) for name, p in own.named_parameters()}
    shared_shapes = {name: tuple(p.shape) for name, p in shared.named_parameters()}
    if own_shapes != shared_shapes:
        raise ModelError(f"the generator's embeddings {own_shapes.get(next(iter(own_shapes)), '')} cannot be tied to "
                         f"the discriminator's {shared_shapes.get(next(iter(shared_shapes)), '')}: "
                         f"{generator.config.model_type} embeddings are as wide as the hidden size; keep the width "
                         "(objective.generator_size=1.0) and shrink the depth (objective.generator_layers=0.33), or "
                         "use model.model_type=electra (embedding_size apart from hidden_size)")
    generator.base_model.embeddings = shared
    generator.tie_weights()


@register_objective
class ReplacedTokenDetection(Objective):
    name = "electra"
    Config = ElectraObjectiveConfig
    encoder = True
    pipeline_tag = "feature-extraction"
    supports_attention_within_documents = True  # both models get the document ids of the uncorrupted blocks

    def __init__(self, config, model_options=None):
        super().__init__(config, model_options)
        self.pair: GeneratorAndDiscriminator | None = None

    def weights(self) -> dict[str, float]:
        return {"generator": self.config.generator_weight, "discriminator": self.config.discriminator_weight}

    def block_layout(self, tokenizer):
        return BlockLayout.encoder(tokenizer, word_starts=self.config.masking != "token")

    def check_model_config(self, model_config) -> None:
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_MASKED_LM_MAPPING_NAMES,
            MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
        )

        suggestion = "an encoder such as electra, bert or modernbert for objective.name='electra'"
        check_head(model_config, MODEL_FOR_MASKED_LM_MAPPING_NAMES, "masked-LM (generator)", suggestion)
        check_head(model_config, MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES, "token-classification (discriminator)",
                   suggestion)
        self.check_document_attention(model_config)

    def build_model(self, model_config):
        from transformers import AutoModelForMaskedLM, AutoModelForPreTraining, AutoModelForTokenClassification
        from transformers.models.auto.modeling_auto import MODEL_FOR_PRETRAINING_MAPPING_NAMES

        if MODEL_FOR_PRETRAINING_MAPPING_NAMES.get(model_config.model_type) == "ElectraForPreTraining":
            discriminator = build_model(self.model_options, model_config, AutoModelForPreTraining)
        else:  # a one-logit token classifier: the replaced-token head of any encoder family
            model_config.num_labels = 1
            discriminator = build_model(self.model_options, model_config, AutoModelForTokenClassification)
        generator = checkpoint_generator(self.model_options)
        small = generator.config if generator is not None else generator_config(model_config, self.config)
        if generator is None:
            generator = build_model(_without_checkpoint(self.model_options), small, AutoModelForMaskedLM)
        tie_embeddings(generator, discriminator)
        self.pair = GeneratorAndDiscriminator(generator, discriminator, self.config)
        logger.info("electra: discriminator %s, generator hidden %s x %s layers (%.1fM parameters with the shared "
                    "embeddings)", type(discriminator).__name__, small.hidden_size, small.num_hidden_layers,
                    sum(p.numel() for p in generator.parameters()) / 1e6)
        return self.pair

    def build_collator(self, tokenizer, *, seed: int, evaluation=None):
        options = self.config.collator_options()
        if evaluation is not None:  # a fixed rate so runs compare; the objective's own replacement split
            options = {**options, "mlm_probability": self.config.eval_mlm_probability}
        return self.document_collator(MaskedLanguageModelingCollator.from_tokenizer(tokenizer, seed=seed, **options),
                                      tokenizer)

    def count(self, batch: dict) -> dict[str, int]:
        masked = int((batch["labels"] != -100).sum())
        if self.config.discriminator_positions == "masked":
            scored = masked
        else:
            scored = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        return {"generator": masked, "discriminator": scored}

    train_metrics = True  # the generator must be neither too weak nor too strong: watch it every window

    def loss(self, model, batch: dict, with_metrics: bool = False) -> ObjectiveLoss:
        out = model(**batch)
        return ObjectiveLoss({"generator": out["generator_loss"], "discriminator": out["discriminator_loss"]},
                             {"generator_accuracy": (out["generator_correct"], "generator"),
                              "discriminator_accuracy": (out["discriminator_correct"], "discriminator"),
                              "replaced_fraction": (out["replaced"], "generator")})

    def representation_model(self, model):
        return model.discriminator

    def flops_per_token(self, model_config, sequence_length: int) -> float:
        small = self.pair.generator.config if self.pair is not None else generator_config(model_config, self.config)
        hidden = model_config.hidden_size
        discriminator_head = 3.0 * (2 * hidden * hidden + 2 * hidden)  # dense + one logit per token
        return (flops_per_token(model_config, sequence_length, 0.0) + discriminator_head
                + flops_per_token(small, sequence_length, self.config.mlm_probability))

    def close(self) -> None:
        if self.pair is not None:
            self.pair.sparse_head.handle.remove()

    def export(self, accelerator, model, tokenizer, output_dir) -> None:
        """The discriminator in ``output_dir``, the generator (fill-mask) in ``output_dir/generator``."""
        from pathlib import Path

        state = accelerator.get_state_dict(model)
        pair = accelerator.unwrap_model(model)
        if accelerator.is_main_process:
            for name, folder in (("discriminator", Path(output_dir)), ("generator", Path(output_dir) / "generator")):
                part = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
                getattr(pair, name).save_pretrained(folder, state_dict=part, safe_serialization=True)
                tokenizer.save_pretrained(folder)
        accelerator.wait_for_everyone()

    def describe(self) -> str:
        config = self.config
        return (f"replaced-token detection (ELECTRA): {config.mlm_probability:g} of tokens masked, generator "
                f"{config.generator_size:g} x hidden and {config.generator_layers:g} x layers with tied embeddings, "
                f"loss = generator MLM + {config.discriminator_weight:g} x discriminator")

    def card_text(self) -> str:
        return ("encoder pretrained as an ELECTRA discriminator (says which tokens a small generator replaced); "
                "its generator is in `generator/`")

    def usage(self, repo_id: str, revision_argument: str, mask_token: str) -> list[str]:
        return ["from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer", "",
                f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}"{revision_argument})',
                f'encoder = AutoModel.from_pretrained("{repo_id}"{revision_argument})          # features',
                f'classifier = AutoModelForSequenceClassification.from_pretrained("{repo_id}"{revision_argument}, num_labels=2)',
                f'generator = AutoModelForMaskedLM.from_pretrained("{repo_id}"{revision_argument}, subfolder="generator")']


def _without_checkpoint(model_options):
    """The options that build a fresh generator (model.model_name_or_path is the discriminator's checkpoint)."""
    return dataclasses.replace(model_options, model_name_or_path=None)


def checkpoint_generator(model_options):
    """The generator a local ELECTRA checkpoint carries in ``generator/`` (an sslnlp export), to continue it with
    its discriminator; None when there is none (a Hub discriminator: a fresh generator)."""
    from pathlib import Path

    from transformers import AutoConfig, AutoModelForMaskedLM

    path = model_options.model_name_or_path
    if not path or not Path(path, "generator", "config.json").is_file():
        return None
    config = AutoConfig.from_pretrained(path, subfolder="generator", trust_remote_code=model_options.trust_remote_code)
    logger.info("electra: continuing the checkpoint's generator (%s/generator)", path)
    return build_model(model_options, config, AutoModelForMaskedLM, head="masked-LM (generator)", subfolder="generator")
