"""A checkpoint with an extended vocabulary: embeddings (and output layer) resized, each new row initialised from the
checkpoint's own rows of the pieces the old tokenizer split the new token into.

    extension = extend_tokenizer(load_tokenizer("bert-base-uncased"), domain_texts, 2000)   # sslnlp.data.vocabulary
    extend_checkpoint("bert-base-uncased", extension, "runs/bert-legal-start")

The mean of the pieces' rows is where the new token starts (Hewitt 2021, "Initializing new word embeddings"; the
practice of transformers #1413's users): close to what the model already meant by the split word, so the first steps
do not pay for a random row. The output bias of a new token is the mean of its pieces' biases likewise; an untied
output layer gets the same initialisation. Old rows are not touched.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from sslnlp.data.vocabulary import Extension, save_extension
from sslnlp.models.modeling import refuse_unread_checkpoint

logger = logging.getLogger(__name__)


def extend_embeddings(model, pieces: dict[int, list[int]], pad_to_multiple_of: int = 64) -> None:
    """Grow ``model``'s token embeddings (and tied or untied output layer and its bias) to hold every new id in
    ``pieces`` and set each new row to the mean of the rows of its old pieces."""
    if not pieces:
        return
    needed = max(pieces) + 1
    if needed > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(needed, pad_to_multiple_of=pad_to_multiple_of or None, mean_resizing=False)
    inputs = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tables = [inputs]
    if output is not None and output.weight is not inputs:
        tables.append(output.weight)
    bias = getattr(output, "bias", None) if output is not None else None
    with torch.no_grad():
        for new_id, old_ids in pieces.items():
            index = torch.tensor(old_ids)
            for table in tables:
                table[new_id] = table[index].mean(0)
            if bias is not None:
                bias[new_id] = bias[index].mean(0)


def load_with_heads(name_or_path: str, trust_remote_code: bool = False, subfolder: str = ""):
    """A checkpoint as the class it was saved as (config.architectures: its heads included); refused in one line when
    its names are not the ones that class reads (``refuse_unread_checkpoint``): extending it would save random
    weights under the right names, which continued pretraining would then accept."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(name_or_path, subfolder=subfolder,
                                                     trust_remote_code=trust_remote_code)
    architectures = getattr(config, "architectures", None) or []
    model_class = getattr(transformers, architectures[0], None) if architectures else None
    if model_class is None:
        model_class = transformers.AutoModel
    model, loading = model_class.from_pretrained(name_or_path, subfolder=subfolder, trust_remote_code=trust_remote_code,
                                                 output_loading_info=True)
    refuse_unread_checkpoint(model, loading, "model.model_name_or_path", name_or_path)
    return model


def extend_checkpoint(name_or_path: str, extension: Extension, folder: str | os.PathLike, *,
                      pad_to_multiple_of: int = 64, trust_remote_code: bool = False) -> None:
    """Write ``name_or_path`` with ``extension``'s vocabulary to ``folder``: the model (its heads kept), an ELECTRA
    checkpoint's ``generator/`` alike, the extended tokenizer and ``vocabulary_extension.json``."""
    parts = [""]
    if Path(name_or_path, "generator", "config.json").is_file():  # an sslnlp ELECTRA export: the generator too
        parts.append("generator")
    for part in parts:
        model = load_with_heads(name_or_path, trust_remote_code, subfolder=part)
        extend_embeddings(model, extension.pieces, pad_to_multiple_of)
        target = Path(folder, part)
        model.save_pretrained(target, safe_serialization=True)
        extension.tokenizer.save_pretrained(target)
    save_extension(extension, folder)
    report = extension.report()
    logger.info("vocabulary extension: %d new %s tokens (%d whole words); tokens per word on %d documents of the "
                "training text %.3f -> %.3f (%.1f%% fewer)", report["new_tokens"], report["kind"], report["new_words"],
                report["documents"], report["tokens_per_word_before"], report["tokens_per_word_after"],
                100 * report["reduction"])
