"""From a labelled task to model inputs and frozen features: each split tokenized once, right-padded batches, the
columns a model reads, and pooled hidden states (first-token, mean or last-token pooling of one layer, or of every
layer) computed under ``torch.no_grad``, shared out over processes when there are several.

Token tasks (a tag per word): the words are joined with spaces and tokenized with offsets; each word's tag goes to
its first sub-token (the token holding the word's first character), the other sub-tokens get -100 (no target), for
every tokenizer kind (WordPiece ``##`` pieces, byte-level BPE, Unigram). A word with no token (cut off by
``max_seq_length``) has position -1 and is left out of training and scoring; the features of a word are the hidden
state at its first sub-token.

Used by the linear probe (probing.py) and fine-tuning (finetuning.py).
"""

from __future__ import annotations

import torch

from sslnlp.config import ProbeOptions
from sslnlp.evaluation.tasks import LabelledTask
from sslnlp.models.pooling import pool

def word_positions(offsets: list[tuple[int, int]], words: tuple[str, ...]) -> list[int]:
    """The index of each word's first sub-token (the token whose character span holds the word's first character,
    the words joined by single spaces), -1 for a word no token holds (cut off)."""
    positions, token, start = [], 0, 0
    for word in words:
        while token < len(offsets) and (offsets[token][0] == offsets[token][1] or offsets[token][1] <= start):
            token += 1  # special tokens (empty spans) and tokens that end before the word
        found = token < len(offsets) and offsets[token][0] <= start < offsets[token][1]
        positions.append(token if found else -1)
        start += len(word) + 1
    return positions


def tokenized_words(task: LabelledTask, tokenizer, max_seq_length: int, split: str) -> dict[str, list]:
    """One split of a token task: input_ids, labels per token (the word's tag at its first sub-token, -100
    elsewhere), word_positions per example."""
    examples = getattr(task, split)
    encoded = tokenizer([" ".join(example.text) for example in examples], truncation=True,
                        max_length=max_seq_length, return_offsets_mapping=True)
    columns = {name: list(encoded[name]) for name in ("input_ids", "token_type_ids") if name in encoded}
    columns["labels"], columns["word_positions"] = [], []
    for example, ids, offsets in zip(examples, encoded["input_ids"], encoded["offset_mapping"]):
        positions = word_positions(offsets, example.text)
        labels = [-100] * len(ids)
        for position, tag in zip(positions, example.label):
            if position >= 0:
                labels[position] = tag
        columns["labels"].append(labels)
        columns["word_positions"].append(positions)
    return columns


def tokenized_splits(task: LabelledTask, tokenizer, max_seq_length: int) -> dict[str, dict[str, list]]:
    """Each split tokenized once (truncated, unpadded) and kept on the task: ``{split: {column: [per example]}}``."""
    key = (getattr(tokenizer, "name_or_path", ""), len(tokenizer), type(tokenizer).__name__, max_seq_length)
    if key not in task.cache:
        splits = {}
        for split in ("train", "validation", "test"):
            if task.is_token_level:
                splits[split] = tokenized_words(task, tokenizer, max_seq_length, split)
                continue
            examples = getattr(task, split)
            texts = [example.text for example in examples]
            pairs = [example.text_pair for example in examples] if task.is_pair else None
            encoded = tokenizer(texts, pairs, truncation=True, max_length=max_seq_length)
            splits[split] = {name: list(encoded[name]) for name in ("input_ids", "token_type_ids") if name in encoded}
            splits[split]["labels"] = [example.label for example in examples]
        task.cache.clear()  # one tokenization per task at a time: a new tokenizer replaces the old one
        task.cache[key] = splits
    return task.cache[key]


def pad_batch(columns: dict[str, list], indices: list[int], pad_token_id: int, with_labels: bool = False,
              regression: bool = False) -> dict[str, torch.Tensor]:
    """Right-pad the examples at ``indices`` to their longest: input_ids [B, L], attention_mask [B, L], ..."""
    length = max(len(columns["input_ids"][i]) for i in indices)
    batch = {"input_ids": torch.full((len(indices), length), pad_token_id, dtype=torch.long),
             "attention_mask": torch.zeros(len(indices), length, dtype=torch.long)}
    if "token_type_ids" in columns:
        batch["token_type_ids"] = torch.zeros(len(indices), length, dtype=torch.long)
    for row, index in enumerate(indices):
        ids = columns["input_ids"][index]
        batch["input_ids"][row, : len(ids)] = torch.tensor(ids)
        batch["attention_mask"][row, : len(ids)] = 1
        if "token_type_ids" in columns:
            batch["token_type_ids"][row, : len(ids)] = torch.tensor(columns["token_type_ids"][index])
    if with_labels and isinstance(columns["labels"][indices[0]], list):  # a token task: -100 where no target
        batch["labels"] = torch.full((len(indices), length), -100, dtype=torch.long)
        for row, index in enumerate(indices):
            batch["labels"][row, : len(columns["labels"][index])] = torch.tensor(columns["labels"][index])
    elif with_labels:
        labels = [columns["labels"][i] for i in indices]
        batch["labels"] = torch.tensor(labels, dtype=torch.float32 if regression else torch.long)
    return batch


def model_columns(columns: dict[str, list], model_config) -> dict[str, list]:
    """The tokenized columns this model reads: token_type_ids only where the model has more than one token type
    (BERT); RoBERTa-style models (type_vocab_size 1) and decoders get none, whatever the tokenizer returned."""
    if getattr(model_config, "type_vocab_size", 0) > 1:
        return columns
    return {name: values for name, values in columns.items() if name != "token_type_ids"}


def pad_token_id_of(tokenizer) -> int:
    """The id to pad with: the tokenizer's pad token, else its end-of-sequence token, else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return candidate


def hidden_batches(encoder, columns: dict[str, list], indices: list[int], layer: int | None, batch_size: int,
                   pad_token_id: int):
    """Yield ``(rows, attention_mask, hidden)`` over the examples at ``indices`` in batches of length-sorted examples
    (padding stays small): ``rows`` are positions in ``indices``; ``hidden`` is one layer's states [B, L, H], or with
    ``layer`` None every layer's, the embeddings first and the model's output (``last_hidden_state``, what layer -1
    gives) last: [B, L, layers + 1, H]. Run it under ``torch.no_grad``."""
    device = next(encoder.parameters()).device
    order = sorted(range(len(indices)), key=lambda k: len(columns["input_ids"][indices[k]]))
    for start in range(0, len(order), batch_size):
        rows = order[start: start + batch_size]
        batch = {k: v.to(device) for k, v in pad_batch(columns, [indices[k] for k in rows], pad_token_id).items()}
        outputs = encoder(**batch, output_hidden_states=layer != -1, return_dict=True)
        if layer is None:
            hidden = torch.stack([*outputs.hidden_states[:-1], outputs.last_hidden_state], 2)
        else:
            hidden = outputs.last_hidden_state if layer == -1 else outputs.hidden_states[layer]
        yield rows, batch["attention_mask"], hidden


@torch.no_grad()
def extract_features(encoder, columns: dict[str, list], indices: list[int], pooling: str, layer: int | None,
                     batch_size: int, pad_token_id: int) -> torch.Tensor:
    """Pooled features [len(indices), H] (float32, CPU) of the examples at ``indices``, in that order; ``layer`` None
    pools every layer: [len(indices), layers + 1, H] (see ``hidden_batches``)."""
    features = None
    for rows, attention_mask, hidden in hidden_batches(encoder, columns, indices, layer, batch_size, pad_token_id):
        if layer is None:  # pool each layer: [B, L, layers + 1, H] -> [B, layers + 1, H]
            pooled = torch.stack([pool(hidden[:, :, k], attention_mask, pooling) for k in range(hidden.shape[2])], 1)
        else:
            pooled = pool(hidden, attention_mask, pooling)
        pooled = pooled.float().cpu()
        if features is None:
            features = torch.empty(len(indices), *pooled.shape[1:])
        features[rows] = pooled
    return features if features is not None else torch.empty(0, 0)


@torch.no_grad()
def extract_word_features(encoder, columns: dict[str, list], indices: list[int], layer: int | None, batch_size: int,
                          pad_token_id: int) -> list[torch.Tensor]:
    """Per example at ``indices``: the hidden states at its words' first sub-tokens, [words kept, H] (every layer:
    [words kept, layers + 1, H]); the words with no token are left out."""
    words: list[torch.Tensor | None] = [None] * len(indices)
    for rows, _, hidden in hidden_batches(encoder, columns, indices, layer, batch_size, pad_token_id):
        for row, k in enumerate(rows):
            kept = [p for p in columns["word_positions"][indices[k]] if p >= 0]
            words[k] = hidden[row, kept].float().cpu()
    return words


def word_targets(columns: dict[str, list]) -> dict[str, torch.Tensor]:
    """The tags of the words kept (flat, [W]) and how many each example keeps ([N]): what a token probe fits and
    scores, aligned with ``extract_word_features``."""
    labels, lengths = [], []
    for token_labels, positions in zip(columns["labels"], columns["word_positions"]):
        kept = [token_labels[p] for p in positions if p >= 0]
        labels.extend(kept)
        lengths.append(len(kept))
    return {"labels": torch.tensor(labels, dtype=torch.long), "lengths": torch.tensor(lengths, dtype=torch.long)}


def _hidden_layers(model) -> int | None:
    config = model.config
    return getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)


def task_features(encoder, tokenizer, task: LabelledTask, options: ProbeOptions, max_seq_length: int,
                  accelerator=None) -> dict[str, torch.Tensor]:
    """``{split: features [N, H]}`` for the three splits; with several processes each computes a share. A token task's
    features are its kept words' ([W, H]), with ``labels:SPLIT`` [W] and ``lengths:SPLIT`` [N] beside them."""
    layers = _hidden_layers(encoder)
    if not options.select_layer and options.layer != -1 and layers is not None \
            and not -(layers + 1) <= options.layer <= layers:
        raise ValueError(f"probe.layer={options.layer} is out of range: the model has {layers} layers (use -1 for "
                         f"the last, 0 for the embeddings, up to {layers})")
    columns = tokenized_splits(task, tokenizer, max_seq_length)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    features = {}
    for split, split_columns in columns.items():
        split_columns = model_columns(split_columns, encoder.config)
        indices = list(range(rank, len(split_columns["input_ids"]), world))
        layer = None if options.select_layer else options.layer
        if task.is_token_level:
            shares = [(indices, extract_word_features(encoder, split_columns, indices, layer,
                                                      options.per_device_eval_batch_size, pad_token_id_of(tokenizer)))]
            if world > 1:
                from accelerate.utils import gather_object

                shares = gather_object(shares)
            by_example = {index: words for share_indices, share in shares for index, words in zip(share_indices, share)}
            features[split] = torch.cat([by_example[i] for i in range(len(split_columns["input_ids"]))])
            features |= {f"{name}:{split}": values for name, values in word_targets(split_columns).items()}
            continue
        mine = extract_features(encoder, split_columns, indices, options.pooling, layer,
                                options.per_device_eval_batch_size, pad_token_id_of(tokenizer))
        if world > 1:
            from accelerate.utils import gather_object

            shares = gather_object([(indices, mine)])
            shape = next(s[1].shape[1:] for s in shares if s[0])
            whole = torch.empty(len(split_columns["input_ids"]), *shape)
            for share_indices, share in shares:
                if share_indices:
                    whole[share_indices] = share
            mine = whole
        features[split] = mine
    return features
