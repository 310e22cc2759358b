"""Adapting a checkpoint to a domain (continued pretraining): what a run does before and around the usual loop.

    sslnlp pretrain recipes/adapt-bert-base.yaml data.train_files=my-domain/*.txt          # domain-adaptive (DAPT)
    sslnlp pretrain recipes/adapt-bert-base.yaml data.task_texts=recipes/evaluate/sst2.yaml  # task-adaptive (TAPT)

- ``data.task_texts``: the training text becomes a task's train split texts (sslnlp.evaluation.tasks.train_texts).
- ``tokenizer.extend_vocabulary``: new tokens learned from the training text (the domain's, never the replayed
  text) and the checkpoint rewritten with them (sslnlp.models.embeddings) into ``output_dir/extended-start``, once;
  the run then continues from that directory like from any checkpoint, so a resume finds it and an interrupted
  extension is redone whole (written beside, renamed into place).
- ``evaluation.general_validation_files``: held-out general text whose loss is measured before the first step and
  after the last, so forgetting is a number in summary.json.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from sslnlp.config import PretrainConfig
from sslnlp.data.corpus import build_corpus
from sslnlp.data.tokenizer import load_tokenizer
from sslnlp.data.vocabulary import EXTENSION_FILE, extend_tokenizer, read_extension
from sslnlp.files import atomic_path
from sslnlp.models.embeddings import extend_checkpoint

logger = logging.getLogger(__name__)
EXTENDED_START = "extended-start"


def with_task_texts(config: PretrainConfig) -> PretrainConfig:
    """data.task_texts: the run's training text is the task's train split texts (labels ignored)."""
    from sslnlp.evaluation.tasks import task_texts

    reference = config.data.task_texts
    if not reference:
        return config
    texts = task_texts(reference)
    logger.info("task-adaptive pretraining on %d train-split texts of %s (labels, validation and test unread)",
                len(texts), reference)
    return dataclasses.replace(config, data=dataclasses.replace(config.data, train_files=texts, mixture_weights=[]))


def with_extended_vocabulary(config: PretrainConfig, accelerator, output_dir: Path) -> PretrainConfig:
    """tokenizer.extend_vocabulary: write (once, on the main process) the checkpoint with its vocabulary extended
    from the training text into output_dir/extended-start and continue from there."""
    options = config.tokenizer
    if options.extend_vocabulary is None:
        return config
    start = output_dir / EXTENDED_START
    if accelerator.is_main_process and not (start / EXTENSION_FILE).is_file():
        model = config.model
        tokenizer = load_tokenizer(model.model_name_or_path, trust_remote_code=model.trust_remote_code)
        data = config.data  # the domain's text only (never the replayed text), in the order training reads it
        domain = build_corpus(dataclasses.replace(data, mixture_weights=[]), data.train_files, data.dataset_split)
        extension = extend_tokenizer(tokenizer, iter(domain), options.extend_vocabulary,
                                     min_frequency=max(options.min_frequency, 1),
                                     max_documents=options.training_documents)
        with atomic_path(start, replace_directory=True) as temporary:
            extend_checkpoint(model.model_name_or_path, extension, temporary,
                              pad_to_multiple_of=model.pad_vocab_to_multiple_of,
                              trust_remote_code=model.trust_remote_code)
    accelerator.wait_for_everyone()
    return dataclasses.replace(config, model=dataclasses.replace(config.model, model_name_or_path=str(start)))


def extension_report(output_dir: Path) -> dict | None:
    """summary.json's vocabulary_extension: the report of the run's extension, without the per-token pieces."""
    record = read_extension(output_dir / EXTENDED_START)
    if record is None:
        return None
    return {key: value for key, value in record.items() if key not in ("pieces", "words")}


def general_corpus(config: PretrainConfig):
    """The general-domain held-out corpus (evaluation.general_validation_files), or None."""
    files = config.evaluation.general_validation_files
    if not files:
        return None
    return build_corpus(dataclasses.replace(config.data, mixture_weights=[], shuffle_documents=False), files,
                        "validation")
