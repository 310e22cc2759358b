"""Typed configs: one dataclass per concern, loaded from YAML with dotted command-line overrides.

    config = load_config(PretrainConfig, "recipes/tiny-cpu.yaml", ["training.max_steps=50", "output_dir=runs/x"])

Unknown keys are errors that suggest the nearest known key; values are converted to the field's type; cross-field
contradictions are rejected in ``check()`` before any work starts. Every field's help text is shown by
``sslnlp pretrain --help``.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A user mistake in a config: one line that names the key and what to do."""


def option(default=None, help: str = "", **kwargs):  # noqa: A002 - "help" reads best in field declarations
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class DataConfig:
    train_files: Any = option("sslnlp:python-docs", "Training text: path, glob, directory, list of them, Hub dataset "
                              "name, or 'sslnlp:python-docs' (docstrings of Python's own library: works offline).")
    mixture_weights: list = option([], "One weight per train_files entry: sample a weighted mixture of the sources.")
    validation_files: Any = option(None, "Held-out text for evaluation (same forms as train_files).")
    validation_holdout_every: int = option(0, "Without validation_files: hold out every N-th training document "
                                              "for evaluation (0: none).")
    dataset_config_name: str | None = option(None, "Hub dataset configuration name.")
    dataset_split: str = option("train", "Hub dataset split for training.")
    text_field: str = option("text", "JSON key / column holding the text.")
    document_separator: str = option("line", "Plain text files: 'line' (a document per line) or 'blank_line'.")
    on_bad_record: str = option("error", "Malformed record: 'error' (stop, naming file and line) or 'skip' (count).")
    max_document_bytes: int = option(16 * 2**20, "Longest record accepted from a file.")
    max_seq_length: int = option(128, "Tokens per packed block, special tokens included.")
    shuffle_buffer_size: int = option(2048, "Blocks held in the shuffle buffer (0: stream order).")
    shuffle_documents: bool = option(False, "Read the training documents into memory and visit them in a seeded "
                                            "random order, reshuffled each epoch (each source of a mixture "
                                            "separately): for corpora stored sorted by source, where the block "
                                            "buffer only mixes neighbours. Costs the text's size in RAM per "
                                            "data-loading process.")
    documents_per_batch: int = option(64, "Documents tokenized per batched tokenizer call.")
    attention_within_documents: bool = option(False, "Packed blocks: each token attends only within its own document "
                                                     "(causally for decoders) and positions restart at 0 after each "
                                                     "separator (sslnlp.data.documents).")
    replay_files: Any = option(None, "Adapting a checkpoint: general-domain text replayed beside train_files "
                                     "against forgetting (same forms as train_files).")
    replay_share: float = option(0.0, "Share of the training documents drawn from replay_files (a seeded mixture).")
    task_texts: str | None = option(None, "Task-adaptive pretraining: an evaluate recipe (sslnlp probe / finetune) "
                                          "whose task's train split texts, labels ignored, are the training text "
                                          "instead of train_files; its validation and test texts are never read. "
                                          "RECIPE#TASK picks one of several tasks.")
    num_workers: int = option(0, "DataLoader worker processes per rank (0: tokenize in the main process).")
    seed: int = option(0, "Seed of the mixture and the shuffle buffer.")


@dataclass
class TokenizerConfig:
    tokenizer_name_or_path: str | None = option(None, "Existing tokenizer directory or Hub name; None trains one.")
    kind: str = option("wordpiece", "Tokenizer to train: wordpiece, bpe or unigram.")
    vocab_size: int = option(8192, "Vocabulary size to train (rounded up to a multiple of 64).")
    min_frequency: int = option(2, "Minimum frequency of a merge / word piece.")
    training_documents: int = option(20000, "Train the tokenizer on the first N documents of the corpus.")
    lowercase: bool | None = option(None, "Lowercase text (default: true for wordpiece, false otherwise).")
    extend_vocabulary: int | None = option(None, "Adapting a checkpoint: learn this many new tokens from the training "
                                                 "text (whole words ranked by the tokens they save), add them to the "
                                                 "checkpoint's own tokenizer and initialise their embeddings from the "
                                                 "pieces they replace (sslnlp.data.vocabulary); reads "
                                                 "training_documents documents, words seen min_frequency times. "
                                                 "None: off.")


@dataclass
class ObjectiveConfig:
    """The ``objective:`` section: ``name`` picks a registered objective (sslnlp.objectives), whose own config class
    (a subclass of this one) holds its options, e.g. ``objective: {name: mlm, mlm_probability: 0.3}``."""

    name: str = option("", "Pretraining objective: one of the registered objectives (sslnlp.objectives; empty: "
                           "the default one, masked LM).")

    def check(self) -> None:
        """Reject contradictions among this objective's options (one line naming the key)."""


# name -> the objective's config class; filled by sslnlp.objectives.register_objective (this module imports none).
# The first objective registered as the default (the objectives package registers masked LM so) is what a config
# without ``objective.name`` gets.
OBJECTIVE_CONFIGS: dict[str, type] = {}
DEFAULT_OBJECTIVE: list[str] = []


def register_objective_config(name: str, config_class: type, default: bool = False) -> None:
    if not (dataclasses.is_dataclass(config_class) and issubclass(config_class, ObjectiveConfig)):
        raise TypeError(f"the config of objective {name!r} must be a dataclass subclassing ObjectiveConfig")
    OBJECTIVE_CONFIGS[name] = config_class
    if default and not DEFAULT_OBJECTIVE:
        DEFAULT_OBJECTIVE.append(name)


def default_objective_name() -> str:
    """The objective a config without ``objective.name`` trains (registered when sslnlp.objectives is imported)."""
    if not DEFAULT_OBJECTIVE:
        raise ConfigError("no objective is registered; import sslnlp (or sslnlp.objectives) before loading a config")
    return DEFAULT_OBJECTIVE[0]


def objective_config_class(name: str, key: str = "objective.name") -> type:
    if name not in OBJECTIVE_CONFIGS:
        raise ConfigError(f"{key}={name!r} is not a registered objective; choose one of "
                          f"{', '.join(sorted(OBJECTIVE_CONFIGS))}")
    return OBJECTIVE_CONFIGS[name]


def default_objective() -> ObjectiveConfig:
    """The default objective's config (registered when sslnlp.objectives is imported, as ``import sslnlp`` does)."""
    return OBJECTIVE_CONFIGS[default_objective_name()]()


@dataclass
class ModelConfig:
    model_type: str = option("bert", "transformers model type built from scratch (bert, roberta, modernbert, gpt2, "
                                     "llama, ...), ignored when model_name_or_path is set.")
    model_name_or_path: str | None = option(None, "Checkpoint to continue pretraining from (directory or Hub name).")
    config_overrides: dict = option({}, "Architecture settings passed to the model config (hidden_size, "
                                        "num_hidden_layers, ...).")
    attn_implementation: str = option("sdpa", "Attention kernel: sdpa, eager, flash_attention_2, ...")
    pad_vocab_to_multiple_of: int = option(64, "Round the embedding matrix's rows up to this multiple.")
    trust_remote_code: bool = option(False, "Allow code from the checkpoint's repository to run.")


@dataclass
class TrainingConfig:
    seed: int = option(42, "Seed of model initialisation and masking.")
    per_device_train_batch_size: int = option(32, "Blocks per device per micro-batch.")
    gradient_accumulation_steps: int = option(1, "Micro-batches per optimizer step.")
    learning_rate: float = option(5e-4, "Peak learning rate.")
    weight_decay: float = option(0.01, "AdamW weight decay (never on biases and norms).")
    adam_beta1: float = option(0.9, "AdamW beta1.")
    adam_beta2: float = option(0.98, "AdamW beta2.")
    adam_epsilon: float = option(1e-6, "AdamW epsilon.")
    max_grad_norm: float = option(1.0, "Gradient clipping norm (0: off).")
    lr_scheduler_type: str = option("linear", "linear, cosine, constant or wsd (warmup-stable-decay).")
    warmup_ratio: float = option(0.06, "Warmup as a fraction of the budget (ignored when warmup_steps > 0).")
    warmup_steps: int = option(0, "Warmup steps.")
    decay_ratio: float = option(0.2, "wsd: fraction of the budget spent decaying at the end.")
    min_lr_ratio: float = option(0.0, "Final learning rate as a fraction of the peak.")
    ema_decay: float | None = option(None, "Weight averaging: after each optimizer step average = ema_decay x average "
                                           "+ (1 - ema_decay) x weights (fp32, in every checkpoint); evaluation "
                                           "(eval_loss; raw_eval_loss: the training weights), the probe and the "
                                           "exported model use the average. In (0, 1), e.g. 0.999; None: off.")
    ema_start: float = option(0.0, "Weight averaging: steps that start before this fraction of the budget copy the "
                                   "weights into the average instead (0: average from the initial weights).")
    batch_size_warmup: float = option(0.0, "Batch-size ramp: over this fraction of the budget the global batch grows "
                                           "linearly from batch_size_warmup_start of it to all of it, by "
                                           "accumulating 1 .. gradient_accumulation_steps micro-batches (0: off).")
    batch_size_warmup_start: float = option(0.25, "Batch-size ramp: the first steps' share of the global batch "
                                                  "(rounded to whole micro-batches, at least one).")
    sequence_length_warmup: float = option(0.0, "Sequence-length warmup: over this fraction of the budget the blocks "
                                                "are cut into shorter ones (the same text, each piece with the "
                                                "block's special tokens), growing linearly from "
                                                "sequence_length_warmup_start tokens to data.max_seq_length (0: off).")
    sequence_length_warmup_start: int = option(64, "Sequence-length warmup: the first steps' block length (rounded "
                                                   "to a length that cuts the blocks into equal pieces).")
    max_steps: int = option(0, "Budget in optimizer steps (0: not set).")
    max_tokens: int = option(0, "Budget in training tokens (0: not set).")
    max_time: float = option(0, "Budget in seconds of training (wall clock, 0: not set); the schedule follows it.")
    mixed_precision: str = option("auto", "'auto' (bf16 where the CPU or GPU computes it natively, else no), 'no', "
                                          "'bf16' or 'fp16' (via Accelerate).")
    max_consecutive_nonfinite_steps: int = option(10, "Stop after this many consecutive steps with a non-finite loss "
                                                      "or gradient (each is skipped and counted).")
    logging_steps: int = option(10, "Log training metrics every N steps.")
    save_steps: int = option(0, "Save a checkpoint every N steps (0: only at the end).")
    save_total_limit: int = option(2, "Keep the newest N checkpoints.")
    resume_from_checkpoint: str | None = option(None, "'auto' (newest complete checkpoint in output_dir), a "
                                                      "checkpoint directory, or None.")
    report_to: list = option([], "Accelerate trackers: tensorboard, wandb, mlflow, ...")
    torch_compile: bool = option(False, "Compile the model with torch.compile.")
    deterministic: bool = option(False, "Deterministic GPU kernels (torch.use_deterministic_algorithms, cuDNN, cuBLAS "
                                 "workspace): the same bits on the same machine and software, at a speed cost; an op "
                                 "without a deterministic kernel raises. CPU runs are deterministic without it.")
    peak_flops: float = option(0, "Peak FLOP/s of one device for the MFU figure (0: from the table of known GPUs, "
                                  "or measured once on a CPU).")
    peer_timeout: float = option(60, "Several processes: a process whose heartbeat (one a second, through the "
                                     "launch's rendezvous store) stops for this many seconds is declared lost; the "
                                     "others exit naming it (0: no heartbeat; a hung peer then blocks until the "
                                     "collective's own timeout, 30 minutes on gloo).")

    def __post_init__(self) -> None:
        self.check_weight_averaging()

    def check_warmups(self, max_seq_length: int) -> None:
        """Batch-size ramp and sequence-length warmup: fractions of the budget, and what each needs."""
        for key in ("batch_size_warmup", "sequence_length_warmup"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"training.{key}={getattr(self, key)!r} is out of range; it must be in [0, 1) (a "
                                  "fraction of the budget; 0: off)")
        if not 0 < self.batch_size_warmup_start <= 1:
            raise ConfigError(f"training.batch_size_warmup_start={self.batch_size_warmup_start!r} must be in (0, 1]")
        if self.batch_size_warmup and self.gradient_accumulation_steps < 2:
            raise ConfigError("training.batch_size_warmup grows the batch by accumulating more micro-batches, but "
                              "training.gradient_accumulation_steps=1; split the batch, e.g. "
                              f"per_device_train_batch_size={max(1, self.per_device_train_batch_size // 4)} "
                              "gradient_accumulation_steps=4")
        if self.sequence_length_warmup and not 8 <= self.sequence_length_warmup_start < max_seq_length:
            raise ConfigError(f"training.sequence_length_warmup_start={self.sequence_length_warmup_start} must be at "
                              f"least 8 and shorter than data.max_seq_length={max_seq_length}")

    def check_weight_averaging(self) -> None:
        """ema_decay in (0, 1) or None, ema_start in [0, 1) (also run by PretrainConfig.check: fields set later)."""
        if self.ema_decay is not None and not (isinstance(self.ema_decay, (int, float)) and 0 < self.ema_decay < 1):
            raise ConfigError(f"training.ema_decay={self.ema_decay!r} is out of range; it must be in (0, 1), e.g. "
                              "0.999, or None (no weight averaging)")
        if not 0 <= self.ema_start < 1:
            raise ConfigError(f"training.ema_start={self.ema_start!r} is out of range; it must be in [0, 1) (a "
                              "fraction of the budget)")


@dataclass
class PretrainEvaluationConfig:
    eval_steps: int = option(0, "Evaluate every N steps (0: only at the end, when there is held-out text).")
    eval_blocks: int = option(256, "Held-out blocks per evaluation: the first N of the validation text in its "
                                   "stored order (cover all of it when it is sorted by source).")
    per_device_eval_batch_size: int = option(32, "Blocks per evaluation batch.")
    eval_seed: int = option(1234, "Seed of the held-out batches' randomness (masks, replacements: fixed, so runs "
                                  "compare).")
    general_validation_files: Any = option(None, "Adapting a checkpoint: general-domain held-out text whose loss is "
                                                 "measured before the first step and after the last (forgetting; "
                                                 "summary.json's general_eval_loss_before / _after).")
    probe_task: dict = option({}, "A labelled task (TaskConfig keys, e.g. {train_file: ..., label_field: ...} or "
                                  "{name: sst2}) to probe during pretraining; empty: no probe.")
    probe_steps: int = option(0, "Run the linear probe every N steps (0: only at the end, when probe_task is set).")
    probe_pooling: str = option("mean", "Probe features: 'mean' or 'first' token pooling of the last layer.")


@dataclass
class HubConfig:
    push_to_hub: bool = option(False, "Push the model (weights, config, tokenizer, metrics, model card) to the Hugging "
                                      "Face Hub from a background thread of the main process; the token comes from "
                                      "HF_TOKEN or `hf auth login`, never from a config.")
    hub_model_id: str | None = option(None, "Hub repository, 'owner/name' or 'name' (your namespace); created if "
                                            "missing.")
    hub_private: bool = option(False, "Create the repository as private (an existing one keeps its visibility).")
    hub_revision: str | None = option(None, "Branch to push to, created from main if missing (None: main).")
    hub_strategy: str = option("end", "'end' (the final model), 'every_save' (also each checkpoint's exported model) "
                                      "or 'checkpoint' (also the latest training state, as last-checkpoint/: resumable "
                                      "from the Hub).")
    hub_license: str = option("apache-2.0", "License in the model card's metadata (the Hub's license identifiers).")
    hub_language: list = option(["en"], "Languages of the training text, in the model card's metadata.")
    hub_max_attempts: int = option(5, "Tries per push; network errors, 408, 429 and 5xx are retried.")
    hub_retry_delay: float = option(2.0, "Seconds before the first retry; doubles after each (at most 5 minutes).")
    hub_wait_timeout: float = option(1800, "At the end of training, wait at most this many seconds for pending pushes.")

    def check(self) -> None:
        if self.hub_strategy not in ("end", "every_save", "checkpoint"):
            raise ConfigError(f"hub.hub_strategy={self.hub_strategy!r} is not valid; choose one of end, every_save, "
                              "checkpoint")
        if self.push_to_hub and not self.hub_model_id:
            raise ConfigError("hub.push_to_hub=true needs a repository: set hub.hub_model_id, e.g. "
                              "hub.hub_model_id=your-name/tiny-bert")
        repo = self.hub_model_id
        if repo is not None and (not re.fullmatch(r"([\w.-]+/)?[\w.-]{1,96}", repo) or ".." in repo or "--" in repo):
            raise ConfigError(f"hub.hub_model_id={repo!r} is not a Hub repository id; use 'owner/name' (letters, "
                              "digits, '-', '_', '.')")
        if self.hub_max_attempts < 1 or self.hub_retry_delay < 0 or self.hub_wait_timeout < 0:
            raise ConfigError("hub.hub_max_attempts must be >= 1, hub.hub_retry_delay and hub.hub_wait_timeout >= 0")


@dataclass
class PretrainConfig:
    output_dir: str = option("runs/pretrain", "Run directory: checkpoints, metrics, final model.")
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    objective: ObjectiveConfig = field(default_factory=default_objective)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: PretrainEvaluationConfig = field(default_factory=PretrainEvaluationConfig)
    hub: HubConfig = field(default_factory=HubConfig)

    def check(self) -> None:
        """Reject contradictions before any work starts (model-dependent checks happen when the model config loads)."""
        choices = {
            "tokenizer.kind": (self.tokenizer.kind, ("wordpiece", "bpe", "unigram")),
            "training.lr_scheduler_type": (self.training.lr_scheduler_type, ("linear", "cosine", "constant", "wsd")),
            "training.mixed_precision": (self.training.mixed_precision, ("auto", "no", "bf16", "fp16")),
            "data.document_separator": (self.data.document_separator, ("line", "blank_line")),
            "data.on_bad_record": (self.data.on_bad_record, ("error", "skip")),
        }
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"{key}={value!r} is not valid; choose one of {', '.join(allowed)}")
        training = self.training
        if not (training.max_steps or training.max_tokens or training.max_time):
            raise ConfigError("no training budget: set training.max_steps, training.max_tokens or training.max_time")
        for key in ("per_device_train_batch_size", "gradient_accumulation_steps"):
            if getattr(training, key) < 1:
                raise ConfigError(f"training.{key} must be >= 1")
        if self.data.max_seq_length < 8:
            raise ConfigError(f"data.max_seq_length={self.data.max_seq_length} is too short; use at least 8")
        objective_config_class(self.objective.name)
        self.objective.check()
        if self.data.mixture_weights and not isinstance(self.data.train_files, list):
            raise ConfigError("data.mixture_weights needs data.train_files to be a list with one entry per weight")
        if self.data.shuffle_documents and self.data.mixture_weights and self.data.validation_holdout_every \
                and not self.data.validation_files:
            raise ConfigError("data.shuffle_documents with data.validation_holdout_every cannot hold out from an "
                              "endless mixture; give data.validation_files, or drop one of the two settings")
        if self.data.mixture_weights and len(self.data.mixture_weights) != len(self.data.train_files):
            raise ConfigError(f"data.mixture_weights has {len(self.data.mixture_weights)} weights for "
                              f"{len(self.data.train_files)} data.train_files entries; give one weight per entry")
        self.check_adaptation()
        if not 0 <= training.warmup_ratio < 1 or not 0 <= training.decay_ratio <= 1:
            raise ConfigError("training.warmup_ratio must be in [0, 1) and training.decay_ratio in [0, 1]")
        check_ranges(self, NUMERIC_RANGES)
        training.check_weight_averaging()
        training.check_warmups(self.data.max_seq_length)
        self.hub.check()

    def check_adaptation(self) -> None:
        """Vocabulary extension, replay and task texts: what they need."""
        data, extend = self.data, self.tokenizer.extend_vocabulary
        if extend is not None:
            if extend < 1:
                raise ConfigError(f"tokenizer.extend_vocabulary={extend}: give a number of new tokens >= 1, or leave it "
                                  "unset (no extension)")
            if not self.model.model_name_or_path:
                raise ConfigError("tokenizer.extend_vocabulary adapts a checkpoint's tokenizer: set "
                                  "model.model_name_or_path (a model trained from scratch trains its own tokenizer on "
                                  "this text)")
            if self.tokenizer.tokenizer_name_or_path:
                raise ConfigError("tokenizer.extend_vocabulary extends the checkpoint's own tokenizer (its embeddings "
                                  "match it); drop tokenizer.tokenizer_name_or_path")
        if not 0 <= data.replay_share < 1:
            raise ConfigError(f"data.replay_share={data.replay_share} must be in [0, 1)")
        if data.replay_share and not data.replay_files:
            raise ConfigError("data.replay_share is set but data.replay_files is not; give the general-domain text to "
                              "replay")
        if data.replay_files and not data.replay_share:
            raise ConfigError("data.replay_files is set but data.replay_share is 0; give the share of documents to "
                              "replay (e.g. 0.2)")


# Numeric settings checked before any work, so a mistake names its key (not the optimizer's or the tokenizer's own
# message from deep inside): key -> (lowest, highest, lowest included, highest included).
NUMERIC_RANGES = {
    "training.learning_rate": (0, None, False, True), "training.weight_decay": (0, None, True, True),
    "training.adam_beta1": (0, 1, True, False), "training.adam_beta2": (0, 1, True, False),
    "training.adam_epsilon": (0, None, False, True), "training.max_grad_norm": (0, None, True, True),
    "training.min_lr_ratio": (0, 1, True, True), "training.warmup_steps": (0, None, True, True),
    "training.max_steps": (0, None, True, True), "training.max_tokens": (0, None, True, True),
    "training.max_time": (0, None, True, True), "training.logging_steps": (1, None, True, True),
    "training.save_steps": (0, None, True, True), "training.save_total_limit": (0, None, True, True),
    "training.max_consecutive_nonfinite_steps": (1, None, True, True), "training.peak_flops": (0, None, True, True),
    "data.shuffle_buffer_size": (0, None, True, True), "data.documents_per_batch": (1, None, True, True),
    "data.num_workers": (0, None, True, True), "data.validation_holdout_every": (0, None, True, True),
    "data.max_document_bytes": (1, None, True, True),
    "tokenizer.vocab_size": (1, None, True, True), "tokenizer.min_frequency": (0, None, True, True),
    "tokenizer.training_documents": (1, None, True, True), "model.pad_vocab_to_multiple_of": (1, None, True, True),
    "evaluation.eval_steps": (0, None, True, True), "evaluation.eval_blocks": (1, None, True, True),
    "evaluation.per_device_eval_batch_size": (1, None, True, True), "evaluation.probe_steps": (0, None, True, True),
}


def check_ranges(config, ranges: dict) -> None:
    """One-line ConfigError naming the first dotted key whose value is outside its range."""
    for key, (low, high, low_included, high_included) in ranges.items():
        value = config
        for part in key.split("."):
            value = getattr(value, part)
        below = value < low if low_included else value <= low
        above = high is not None and (value > high if high_included else value >= high)
        if below or above:
            interval = (f"{'[' if low_included else '('}{low}, {high if high is not None else 'inf'}"
                        f"{']' if high_included and high is not None else ')'}")
            raise ConfigError(f"{key}={value!r} is out of range; it must be in {interval}")


# ---------------------------------------------------------------------------------------------------- loading


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML / command-line value to the field's type (YAML reads 5e-4 as a string, for example)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and type(None) in typing.get_args(annotation)):
            return None
        annotation = arguments[0] if len(arguments) == 1 else Any
    if annotation is Any or value is None:
        return value
    try:
        if annotation is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "yes", "1", "on"):
                    return True
                if value.lower() in ("false", "no", "0", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if annotation is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) and re.fullmatch(r"[\d.]+e\d+", value) else int(value)
        if annotation is float:
            return float(value)
        if annotation is str:
            if isinstance(value, bool):  # YAML 1.1 reads a bare no / yes (mixed_precision: no) as a boolean
                return "yes" if value else "no"
            return str(value)
        if annotation in (list, dict) or typing.get_origin(annotation) in (list, dict):
            if isinstance(value, str):
                value = yaml.safe_load(value)
            expected = typing.get_origin(annotation) or annotation
            if expected is list and not isinstance(value, list):
                value = [value]
            if not isinstance(value, expected):
                raise ValueError(value)
            return value
    except (TypeError, ValueError):
        name = getattr(annotation, "__name__", str(annotation))
        raise ConfigError(f"{key}={value!r} is not a valid {name}") from None
    return value


def _unknown_key(key: str, known: list[str], where: str) -> ConfigError:
    guess = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f"; did you mean {guess[0]!r}?" if guess else f"; known keys: {', '.join(known)}"
    return ConfigError(f"unknown config key {where + key!r}{hint}")


def _is_objective_field(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, ObjectiveConfig)


def build(cls, values: dict, prefix: str = ""):
    """Build dataclass ``cls`` from a nested dict, converting types and rejecting unknown keys. The ``objective``
    section is built as the config class of the objective its ``name`` picks."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping of keys to values, got {values!r}")
    types_of = _field_types(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            if issubclass(cls, ObjectiveConfig):
                raise ConfigError(f"{prefix}{key} is not an option of objective {values.get('name') or default_objective_name()!r}; its "
                                  f"options: {', '.join(prefix + k for k in known)}")
            raise _unknown_key(key, _all_keys(cls) if not prefix else known, prefix)
        annotation = types_of[key]
        if _is_objective_field(annotation):
            value = value or {}
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{key} must be a mapping such as {{name: mlm, mlm_probability: 0.15}}, "
                                  f"got {value!r}")
            name = _convert(value.get("name") or default_objective_name(), str, f"{prefix}{key}.name")
            kwargs[key] = build(objective_config_class(name, f"{prefix}{key}.name"), {**value, "name": name},
                                f"{prefix}{key}.")
        elif dataclasses.is_dataclass(annotation):
            kwargs[key] = build(annotation, value or {}, f"{prefix}{key}.")
        else:
            kwargs[key] = _convert(value, annotation, prefix + key)
    return cls(**kwargs)


def _section_class(annotation, objective_name: str | None):
    """The dataclass of a nested section; the objective section's depends on the chosen objective."""
    if _is_objective_field(annotation):
        return OBJECTIVE_CONFIGS.get(objective_name or default_objective_name(), ObjectiveConfig)
    return annotation


def _all_keys(cls, prefix: str = "", objective_name: str | None = None) -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        annotation = _field_types(cls)[f.name]
        keys.append(prefix + f.name)
        if dataclasses.is_dataclass(annotation):
            keys.extend(_all_keys(_section_class(annotation, objective_name), f"{prefix}{f.name}.", objective_name))
    return keys


# Keys that moved (key -> where it lives now): the old ``masking:`` section became the objective section when
# objectives became plug-ins, and masked-LM settings left the general sections for the objectives that use them.
LEGACY_KEYS = {"masking.objective": "objective.name", "masking.masking": "objective.masking",
               "model.sparse_prediction": "objective.sparse_prediction",
               "evaluation.eval_mlm_probability": "objective.eval_mlm_probability"}


def _legacy_key(key: str) -> str | None:
    if key in LEGACY_KEYS:
        return LEGACY_KEYS[key]
    return "objective." + key.split(".", 1)[1] if key.startswith("masking.") else None


def _move_legacy_values(values: dict, where: str) -> list[tuple[str, str]]:
    """Move the values of old keys in a recipe's sections to their new place; return (old, new) pairs."""
    moved = []
    legacy = values.pop("masking", None)
    if legacy is not None and not isinstance(legacy, dict):
        raise ConfigError(f"{where}: masking must be a mapping; it is now the objective section, e.g. "
                          "objective: {name: mlm, mlm_probability: 0.15}")
    sections = {"masking": legacy or {}}
    for old in LEGACY_KEYS:
        section, key = old.split(".", 1)
        if section != "masking" and isinstance(values.get(section), dict) and key in values[section]:
            sections.setdefault(section, {})[key] = values[section].pop(key)
    for section, entries in sections.items():
        for key, value in entries.items():
            new = _legacy_key(f"{section}.{key}")
            values.setdefault("objective", {})
            if not isinstance(values["objective"], dict):
                continue
            values["objective"].setdefault(new.split(".", 1)[1], value)
            moved.append((f"{section}.{key}", new))
    return moved


def translate_legacy_keys(values: dict, overrides: list[str], where: str = "config") -> tuple[dict, list[str]]:
    """Rewrite keys that moved (the old ``masking:`` section, ``model.sparse_prediction``,
    ``evaluation.eval_mlm_probability``) to their place in the objective section, saying what to rename. Moved keys
    that the chosen objective does not have (a next-token recipe's old masking defaults) are dropped."""
    renamed = _move_legacy_values(values, where)
    translated = []
    for override in overrides:
        key, _, value = override.partition("=")
        new = _legacy_key(key)
        if new:
            renamed.append((key, new))
            override = f"{new}={value}"
        translated.append(override)
    if renamed:
        name = next((o.split("=", 1)[1] for o in reversed(translated) if o.startswith("objective.name=")),
                    (values.get("objective") or {}).get("name") or default_objective_name())
        fields = {f.name for f in dataclasses.fields(OBJECTIVE_CONFIGS.get(name, ObjectiveConfig))}
        moved = {new.split(".", 1)[1] for _, new in renamed}
        section = values.get("objective") or {}
        for key in [k for k in section if k in moved and k not in fields]:
            del section[key]
        translated = [o for o in translated if o.split("=", 1)[0] not in {new for _, new in renamed}
                      or o.split("=", 1)[0].split(".", 1)[1] in fields]
        logger.warning("%s: these settings moved into the objective section; rename %s", where,
                       ", ".join(f"{old} -> {new}" for old, new in dict(renamed).items()))
    return values, translated


def apply_overrides(values: dict, overrides: list[str], cls) -> dict:
    """Apply ``dotted.key=value`` overrides to a nested dict. A top-level key of a section may be written without
    the section when it is unique (``max_steps=10`` for ``training.max_steps=10``); ``output_dir=...`` is top level."""
    objective_name = next((yaml.safe_load(o.split("=", 1)[1]) for o in reversed(overrides) if o.startswith("objective.name=")),
                          (values.get("objective") or {}).get("name") if isinstance(values.get("objective"), dict) else None)
    all_keys = _all_keys(cls, objective_name=str(objective_name) if objective_name else None)
    leaf_sections = {}
    for dotted in all_keys:
        parts = dotted.split(".")
        leaf_sections.setdefault(parts[-1], []).append(dotted)
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} must look like key=value, e.g. training.max_steps=100")
        key, raw = override.split("=", 1)
        if "." not in key and key not in [f.name for f in dataclasses.fields(cls)] and len(leaf_sections.get(key, [])) == 1:
            key = leaf_sections[key][0]
        if key not in all_keys:
            if key.startswith("objective."):
                options = [k for k in all_keys if k.startswith("objective.")]
                guess = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
                raise ConfigError(f"{key} is not an option of objective {objective_name or default_objective_name()!r}; "
                                  + (f"did you mean {guess[0]!r}?" if guess else f"its options: {', '.join(options)}"))
            raise _unknown_key(key, all_keys, "")
        target = values
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        target[parts[-1]] = yaml.safe_load(raw) if raw != "" else None
    return values


def load_config(cls, path: str | Path | None = None, overrides: list[str] | None = None):
    """Load a config from a YAML file (safe loader) with dotted overrides; None starts from the defaults."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe {str(path)!r} does not exist; see recipes/ for examples")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{where}: invalid YAML ({getattr(error, 'problem', error)})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: a recipe must be a mapping of sections to settings")
    overrides = list(overrides or [])
    if any(f.name == "objective" for f in dataclasses.fields(cls)):
        values, overrides = translate_legacy_keys(values, overrides, str(path) if path else "overrides")
    try:
        values = apply_overrides(values, overrides, cls)
        config = build(cls, values)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}" if path else str(error)) from None
    return config


def to_dict(config):
    """A config as nested dicts. Unlike dataclasses.asdict, values that are Python objects (a corpus given as a
    generator or a dataset) are passed through, not deep-copied: a generator cannot be copied."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, dict):
        return {key: to_dict(value) for key, value in config.items()}
    if isinstance(config, (list, tuple)):
        return type(config)(to_dict(value) for value in config)
    return config


def describe(cls, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every field: the CLI's --help. The objective section lists every registered
    objective's options, each help text starting with the objective it belongs to."""
    rows = []
    for f in dataclasses.fields(cls):
        annotation = _field_types(cls)[f.name]
        if _is_objective_field(annotation):
            rows.extend(describe(ObjectiveConfig, f"{prefix}{f.name}."))
            for name, objective_class in sorted(OBJECTIVE_CONFIGS.items()):
                rows.extend((key, default, f"({name}) {text}") for key, default, text
                            in describe(objective_class, f"{prefix}{f.name}.") if not key.endswith(".name"))
        elif dataclasses.is_dataclass(annotation):
            rows.extend(describe(annotation, f"{prefix}{f.name}."))
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((prefix + f.name, repr(default), f.metadata.get("help", "")))
    return rows


# ------------------------------------------------------------------------------------------- evaluation configs
# `sslnlp probe` and `sslnlp finetune` read the same recipe: shared settings at the top, one section per protocol,
# so one YAML scores a checkpoint both ways and both write into the same results table.


@dataclass
class TaskConfig:
    name: str | None = option(None, "Task name: a GLUE task (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli: "
                                    "dataset, columns, labels and metrics built in) or your own name.")
    train_file: str | None = option(None, "Labelled training examples: .jsonl, .csv, .tsv or .parquet (may be "
                                          "compressed: .gz, .bz2, .xz).")
    validation_file: str | None = option(None, "Validation examples (selects the probe's regularisation); without "
                                                "it split_ratio of train_file is held out.")
    test_file: str | None = option(None, "Test examples (the reported scores); without it split_ratio of "
                                          "train_file is held out.")
    split_ratio: float = option(0.1, "Fraction of the training examples held out for each missing split.")
    dataset_name: str | None = option(None, "Hub dataset instead of files (needs network or the datasets cache).")
    dataset_config_name: str | None = option(None, "Hub dataset configuration name.")
    train_split: str = option("train", "Hub dataset split to train on.")
    validation_split: str | None = option(None, "Hub split for validation (None: split_ratio of train).")
    test_split: str | None = option(None, "Hub split to report (None: split_ratio of train).")
    text_field: str = option("text", "Column holding the text.")
    text_pair_field: str | None = option(None, "Column holding the second text of sentence-pair tasks.")
    kind: str = option("sequence", "'sequence': one label per text (or pair); 'token': one label per word, the "
                                   "text column holding the list of words and the label column the list of tags "
                                   "(CoNLL-2003's tokens / ner_tags; BIO tags are scored by entity F1).")
    label_field: str = option("label", "Column holding the label: class names or integers; numbers for regression.")
    label_names: Any = option(None, "Class names in id order (a list, or a path to a JSON list); default: the "
                                    "sorted distinct labels of the training split (integer labels keep their ids).")
    problem_type: str = option("classification", "'classification' or 'regression'.")
    metric: str | None = option(None, "Metric to select and report first: accuracy, f1, macro_f1, "
                                      "matthews_correlation, pearson or spearman (default: GLUE's official one; "
                                      "accuracy for classification, pearson for regression).")
    max_seq_length: int | None = option(None, "Longest input in tokens (default: the run's max_seq_length).")
    max_train_examples: int = option(0, "Use at most N training examples, a seeded sample (0: all).")
    seed: int = option(0, "Seed of the held-out splits and of the training sample.")


@dataclass
class ProbeOptions:
    pooling: str = option("mean", "Sentence vector: 'first' (the [CLS] / first token), 'mean' (over tokens) or "
                                  "'last' (last token: decoders).")
    layer: int = option(-1, "Hidden layer to pool: -1 the last, 0 the embeddings, k the k-th layer's output.")
    select_layer: bool = option(False, "Probe every layer (0 the embeddings ... the last) and report the one best on "
                                       "validation, with the whole scan (the random twin is scanned the same way); "
                                       "probe.layer is then ignored.")
    per_device_eval_batch_size: int = option(64, "Examples per forward pass when extracting features.")
    l2_grid: list = option([1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0], "L2 strengths tried (on standardized "
                           "features; loss = mean cross-entropy + l2 / 2 x |W|^2); the best on validation is reported.")
    max_iterations: int = option(200, "L-BFGS iterations per L2 strength (logistic regression).")
    cache_features: bool = option(True, "Keep extracted features under output_dir/features (keyed by checkpoint, "
                                        "task and pooling) and reuse them.")


@dataclass
class FinetuneOptions:
    learning_rate: float = option(5e-5, "Peak learning rate (one setting for every task: no per-task search).")
    num_train_epochs: float = option(3, "Epochs over the training split.")
    max_steps: int = option(0, "Optimizer steps of a run (0: num_train_epochs decides).")
    min_steps: int = option(0, "At least this many optimizer steps whatever the epochs (a learning curve's 64 "
                               "examples are 2 steps an epoch at batch 32).")
    evaluations: int = option(0, "Validate this many times at evenly spaced steps (0: after every epoch).")
    early_stopping: bool = option(False, "Report the test score at the validation point with the best score (the "
                                         "weights of that point) instead of at the end.")
    per_device_train_batch_size: int = option(32, "Examples per device per step.")
    per_device_eval_batch_size: int = option(64, "Examples per evaluation batch.")
    seeds: list = option([0, 1, 2], "One run per seed (head initialisation, data order); the median is reported.")
    warmup_ratio: float = option(0.1, "Linear warmup as a fraction of the steps, then linear decay to 0.")
    weight_decay: float = option(0.01, "AdamW weight decay (never on biases and norms).")
    max_grad_norm: float = option(1.0, "Gradient clipping norm (0: off).")
    mixed_precision: str = option("no", "'no', 'bf16' or 'fp16' (via Accelerate).")
    classifier_dropout: float | None = option(None, "Dropout before the classification head (None: the model's).")
    save_model: bool = option(True, "Save the first seed's fine-tuned model (Hugging Face format) in "
                                    "output_dir/<task>.")


@dataclass
class EvaluateConfig:
    output_dir: str = option("runs/evaluate", "Where results.json / results.md, features and fine-tuned models go.")
    model_name_or_path: str | None = option(None, "Checkpoint to evaluate: a directory (e.g. runs/tiny-cpu) or a "
                                                  "Hub name.")
    tokenizer_name_or_path: str | None = option(None, "Tokenizer (default: the checkpoint's).")
    tasks: list = option([], "Tasks: GLUE names ('sst2') or mappings of TaskConfig keys (name, train_file, "
                             "text_field, ...).")
    max_seq_length: int = option(128, "Longest input in tokens (a task's max_seq_length wins).")
    random_baseline: bool = option(True, "Also evaluate the same architecture with random weights: the floor.")
    seed: int = option(0, "Seed of the probe and of the random-weight twin of the probe.")
    train_sizes: list = option([], "Learning curve: training-set sizes (integers, or 'all' for the whole train split), "
                                   "each scored on one stratified subset of the train split per curve seed (nested: "
                                   "a seed's larger subset holds its smaller ones); empty: no curve.")
    curve_seeds: list = option([0, 1, 2], "Learning curve: one subset (and one probe / fine-tune seed) per seed.")
    tfidf_baseline: bool = option(True, "Learning curve: also score TF-IDF + logistic regression on the same subsets "
                                        "(needs scikit-learn).")
    trust_remote_code: bool = option(False, "Allow code from the checkpoint's repository to run.")
    probe: ProbeOptions = field(default_factory=ProbeOptions)
    finetune: FinetuneOptions = field(default_factory=FinetuneOptions)

    def check(self) -> None:
        """Reject contradictions before any model loads."""
        if not self.model_name_or_path:
            raise ConfigError("model_name_or_path is not set; give a checkpoint directory (e.g. runs/tiny-cpu) or a "
                              "Hub name")
        if not self.tasks:
            raise ConfigError("no tasks: set tasks, e.g. tasks=[sst2] or a list of mappings with train_file")
        choices = {"probe.pooling": (self.probe.pooling, ("first", "mean", "last")),
                   "finetune.mixed_precision": (self.finetune.mixed_precision, ("no", "bf16", "fp16"))}
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"{key}={value!r} is not valid; choose one of {', '.join(allowed)}")
        if not self.probe.l2_grid or any(not isinstance(v, (int, float)) or v < 0 for v in self.probe.l2_grid):
            raise ConfigError(f"probe.l2_grid={self.probe.l2_grid!r} must be a non-empty list of numbers >= 0")
        if not self.finetune.seeds or any(not isinstance(s, int) for s in self.finetune.seeds):
            raise ConfigError(f"finetune.seeds={self.finetune.seeds!r} must be a non-empty list of integers")
        if self.finetune.num_train_epochs <= 0 or self.finetune.per_device_train_batch_size < 1:
            raise ConfigError("finetune.num_train_epochs must be > 0 and finetune.per_device_train_batch_size >= 1")
        if self.max_seq_length < 4:
            raise ConfigError(f"max_seq_length={self.max_seq_length} is too short; use at least 4")
        if any(size != "all" and (isinstance(size, bool) or not isinstance(size, int) or size < 1)
               for size in self.train_sizes):
            raise ConfigError(f"train_sizes={self.train_sizes!r} must list positive integers or 'all', e.g. "
                              "train_sizes=[64, 256, all]")
        if not self.curve_seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in self.curve_seeds):
            raise ConfigError(f"curve_seeds={self.curve_seeds!r} must be a non-empty list of integers")
        for key in ("max_steps", "min_steps", "evaluations"):
            if getattr(self.finetune, key) < 0:
                raise ConfigError(f"finetune.{key}={getattr(self.finetune, key)} must be >= 0")
        self.task_configs()

    def task_configs(self) -> list[TaskConfig]:
        """``tasks`` as TaskConfig objects: a string is a task name; unknown keys get the nearest-key suggestion."""
        configs = []
        for index, entry in enumerate(self.tasks):
            if isinstance(entry, TaskConfig):
                configs.append(entry)
                continue
            if isinstance(entry, str):
                entry = {"name": entry}
            configs.append(build(TaskConfig, entry, prefix=f"tasks[{index}]."))
        return configs


# Names of earlier releases: `sslnlp probe` and `sslnlp finetune` take the same config (one recipe can hold both
# sections), and the pretraining recipe's ``evaluation:`` section has a name that says whose it is.
RENAMED_CLASSES = {"ProbeConfig": "EvaluateConfig", "FinetuneConfig": "EvaluateConfig",
                   "EvaluationConfig": "PretrainEvaluationConfig"}


def renamed_class(name: str):
    """The class an old name stands for, with a one-line deprecation warning (module ``__getattr__`` of sslnlp and
    sslnlp.config)."""
    import warnings

    warnings.warn(f"{name} is now {RENAMED_CLASSES[name]}; the old name will go in a later release", FutureWarning,
                  stacklevel=3)
    return globals()[RENAMED_CLASSES[name]]


def __getattr__(name: str):
    if name in RENAMED_CLASSES:
        return renamed_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
