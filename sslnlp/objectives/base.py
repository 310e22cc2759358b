"""The objective protocol and registry: everything specific to a pretraining objective lives behind this interface.

An objective is a class with a config dataclass (its ``objective:`` section) and a handful of methods that the
training loop, packing, the tokenizer and the model card call. None of them tests an objective's name. Register a new
one with ``@register_objective`` in any module that is imported before the config loads (a built-in module under
``sslnlp/objectives/``, your own package, or a test suite); ``objective: {name: yours, ...}`` then selects it.

The loss contract. ``count(batch)`` returns, before the forward pass, the number of targets each loss term is
normalised by ({term: n}); the loop sums these over micro-batches and processes, so every target weighs the same
whatever the accumulation or world size. ``loss(model, batch)`` returns an ``ObjectiveLoss`` whose ``sums`` hold each
term's summed loss; the optimised loss is sum_k weight_k x sums_k / global count_k, and the logged ``loss`` is the same
quantity over a logging window. ``metrics`` are extra sums (correct predictions, ...) reported per target of a term.

Attention within documents (``data.attention_within_documents``). An objective that supports it sets
``supports_attention_within_documents``, wraps its collator with ``document_collator`` (batches then carry
``document_ids``), calls ``check_document_attention`` from ``check_model_config``, and runs its models on
``sslnlp.models.modeling.model_inputs(model, batch)`` (dense_loss and SparseMaskedLMHead do), which turns the document ids
into per-document position ids and attention. ``build_objective`` refuses the option for the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from sslnlp.config import ConfigError, ObjectiveConfig, objective_config_class, register_objective_config
from sslnlp.data.documents import DocumentCollator
from sslnlp.models.modeling import check_document_attention


@dataclass
class ObjectiveLoss:
    """What an objective's loss returns for one micro-batch.

    Args:
        sums: term -> summed loss (a scalar tensor with a graph); each is normalised by that term's global count.
        metrics: metric name -> (summed value, term): reported as the sum divided by the term's count (e.g.
            ``{"accuracy": (correct, "mlm")}``). Only asked for at evaluation unless the objective logs them always.
    """

    sums: dict[str, torch.Tensor]
    metrics: dict[str, tuple[torch.Tensor, str]] = field(default_factory=dict)


class Objective:
    """Base class of pretraining objectives. Subclasses set the class attributes and override the methods.

    Class attributes:
        name: the registry key (``objective.name``).
        Config: the dataclass of the objective's options (a subclass of ``sslnlp.config.ObjectiveConfig``).
        encoder: the tokenizer needs a mask token and [CLS]/[SEP] around sequences (False: a decoder's tokenizer).
        pipeline_tag: the Hub pipeline tag of the exported model ("fill-mask", "text-generation", ...).
        reports_perplexity: evaluation also reports exp(loss) (language-modelling objectives).
        contrasts_across_ranks: the loss of a micro-batch compares it with every process's micro-batch (in-batch
            negatives gathered from all ranks): a resume on another number of processes keeps that set of examples.
        is_default: what a config without ``objective.name`` trains (the built-in masked LM).
    """

    name: ClassVar[str] = ""
    is_default: ClassVar[bool] = False  # trained by a config without objective.name (one objective says so)
    Config: ClassVar[type] = ObjectiveConfig
    encoder: ClassVar[bool] = True
    pipeline_tag: ClassVar[str] = "feature-extraction"
    reports_perplexity: ClassVar[bool] = False
    contrasts_across_ranks = False
    train_metrics: ClassVar[bool] = False  # compute ``metrics`` during training too and log them every window
    supports_attention_within_documents: ClassVar[bool] = False  # see the module docstring
    data_options = None  # the run's DataConfig (set by build_objective; None: the defaults)

    def __init__(self, config: ObjectiveConfig, model_options=None):
        self.config = config
        self.model_options = model_options

    @property
    def attention_within_documents(self) -> bool:
        """data.attention_within_documents: each token attends, and counts positions, within its own document."""
        return bool(getattr(self.data_options, "attention_within_documents", False))

    def document_collator(self, collator, tokenizer):
        """``collator``, adding ``document_ids`` to its batches when attention stays within documents."""
        if not self.attention_within_documents:
            return collator
        layout = self.block_layout(tokenizer)
        return DocumentCollator(collator, layout.separator, block_suffix=bool(layout.suffix))

    def check_document_attention(self, model_config) -> None:
        """One-line error when attention must stay within documents but the architecture cannot do it."""
        if self.attention_within_documents:
            check_document_attention(model_config, self.model_options.attn_implementation)

    # ---------------------------------------------------------------------------------------- data and model
    def block_layout(self, tokenizer):
        """The ``sslnlp.data.packing.BlockLayout`` of packed blocks (special tokens, separator, word starts)."""
        raise NotImplementedError

    def build_model(self, model_config):
        """The model(s) trained, as one ``torch.nn.Module`` (a wrapper when there are several), from the checked
        transformers config (``sslnlp.models.modeling.build_model_config``) and ``self.model_options``."""
        raise NotImplementedError

    def representation_model(self, model):
        """The (unwrapped) model whose hidden states represent text: what probes and embeddings use."""
        return model

    def check_model_config(self, model_config) -> None:
        """Fail with one line when the architecture cannot serve this objective (no such head, ...)."""

    def build_collator(self, tokenizer, *, seed: int, evaluation=None):
        """The collator turning a batch of blocks {input_ids [B, L], word_starts?, attention_mask?} into model
        inputs and targets. ``evaluation``: the PretrainEvaluationConfig when building the held-out collator (fixed rates)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------- loss
    loss_weights: ClassVar[dict[str, float]] = {}

    def weights(self) -> dict[str, float]:
        """term -> weight of its normalised loss in the optimised total (default: the class's ``loss_weights``)."""
        return dict(self.loss_weights)

    def count(self, batch: dict) -> dict[str, int]:
        """term -> number of targets in this micro-batch (known before the forward pass)."""
        raise NotImplementedError

    def loss(self, model, batch: dict, with_metrics: bool = False) -> ObjectiveLoss:
        raise NotImplementedError

    def flops_per_token(self, model_config, sequence_length: int) -> float:
        """Training FLOPs per input token of everything this objective runs (for MFU)."""
        raise NotImplementedError

    def close(self) -> None:
        """Undo what ``build_model`` attached to the model (hooks) before it is exported or reused."""

    # ------------------------------------------------------------------------------------- export and card
    def export(self, accelerator, model, tokenizer, output_dir) -> None:
        """Write the trained model(s) in Hugging Face format into ``output_dir`` (every rank calls this)."""
        from sslnlp.models.export import export_model

        export_model(accelerator, model, tokenizer, output_dir)

    def describe(self) -> str:
        """One line for the model card's recipe table: what was optimised, with its settings."""
        return self.name

    def card_text(self) -> str:
        """One sentence for the model card: what the model is and what it was trained to do."""
        return f"pretrained with the {self.name} objective"

    def usage(self, repo_id: str, revision_argument: str, mask_token: str) -> list[str]:
        """Python lines of the model card's "How to use" block."""
        return ["from transformers import AutoModel, AutoTokenizer",
                f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}"{revision_argument})',
                f'model = AutoModel.from_pretrained("{repo_id}"{revision_argument})']


OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(objective_class: type[Objective]) -> type[Objective]:
    """Class decorator: make ``objective: {name: <objective_class.name>}`` select this objective."""
    if not objective_class.name:
        raise TypeError(f"{objective_class.__name__} needs a class attribute `name`")
    OBJECTIVES[objective_class.name] = objective_class
    register_objective_config(objective_class.name, objective_class.Config, default=objective_class.is_default)
    return objective_class


def objective_names() -> list[str]:
    return sorted(OBJECTIVES)


def get_objective(name: str) -> type[Objective]:
    """The registered objective class called ``name`` (one-line error listing the choices otherwise)."""
    objective_config_class(name)  # the error that lists the registered names
    return OBJECTIVES[name]


def build_objective(config: ObjectiveConfig, model_options=None, data_options=None) -> Objective:
    """The objective of a run's ``objective:`` section (``model_options``: its ModelConfig; ``data_options``: its
    DataConfig, for data.attention_within_documents)."""
    objective = get_objective(config.name)(config, model_options)
    objective.data_options = data_options
    if objective.attention_within_documents and not objective.supports_attention_within_documents:
        raise ConfigError(f"data.attention_within_documents is not supported by objective.name={config.name!r}; "
                          "set data.attention_within_documents=false")
    return objective
