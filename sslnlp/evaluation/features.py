"""From a labelled task to model inputs and frozen features: each split tokenized once, right-padded batches, the
columns a model reads, and pooled hidden states (first-token, mean or last-token pooling of one layer, or of every
layer) computed under ``torch.no_grad``, shared out over processes when there are several.

Used by the linear probe (probing.py) and fine-tuning (finetuning.py).
"""

from __future__ import annotations

import torch

from sslnlp.config import ProbeOptions
from sslnlp.evaluation.tasks import LabelledTask
from sslnlp.models.pooling import pool

def tokenized_splits(task: LabelledTask, tokenizer, max_seq_length: int) -> dict[str, dict[str, list]]:
    """Each split tokenized once (truncated, unpadded) and kept on the task: ``{split: {column: [per example]}}``."""
    key = (getattr(tokenizer, "name_or_path", ""), len(tokenizer), type(tokenizer).__name__, max_seq_length)
    if key not in task.cache:
        splits = {}
        for split in ("train", "validation", "test"):
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
    if with_labels:
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


@torch.no_grad()
def extract_features(encoder, columns: dict[str, list], indices: list[int], pooling: str, layer: int | None,
                     batch_size: int, pad_token_id: int) -> torch.Tensor:
    """Pooled features [len(indices), H] (float32, CPU) of the examples at ``indices``, in that order.

    ``layer`` None pools every layer: [len(indices), layers + 1, H], the embeddings first and the model's output
    (``last_hidden_state``, what layer -1 gives) last. Batches are formed from length-sorted examples, so padding
    stays small.
    """
    device = next(encoder.parameters()).device
    order = sorted(range(len(indices)), key=lambda k: len(columns["input_ids"][indices[k]]))
    features = None
    for start in range(0, len(order), batch_size):
        rows = order[start: start + batch_size]
        batch = {k: v.to(device) for k, v in pad_batch(columns, [indices[k] for k in rows], pad_token_id).items()}
        outputs = encoder(**batch, output_hidden_states=layer != -1, return_dict=True)
        if layer is None:
            hidden_states = [*outputs.hidden_states[:-1], outputs.last_hidden_state]
            pooled = torch.stack([pool(h, batch["attention_mask"], pooling) for h in hidden_states], 1).float().cpu()
        else:
            hidden = outputs.last_hidden_state if layer == -1 else outputs.hidden_states[layer]  # [B, L, H]
            pooled = pool(hidden, batch["attention_mask"], pooling).float().cpu()
        if features is None:
            features = torch.empty(len(indices), *pooled.shape[1:])
        features[rows] = pooled
    return features if features is not None else torch.empty(0, 0)


def _hidden_layers(model) -> int | None:
    config = model.config
    return getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)


def task_features(encoder, tokenizer, task: LabelledTask, options: ProbeOptions, max_seq_length: int,
                  accelerator=None) -> dict[str, torch.Tensor]:
    """``{split: features [N, H]}`` for the three splits; with several processes each computes a share."""
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
        mine = extract_features(encoder, split_columns, indices, options.pooling,
                                None if options.select_layer else options.layer,
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
