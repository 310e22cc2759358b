"""Document-aware packing (``data.attention_within_documents``): which document each token of a packed block
belongs to, its position inside that document, and the attention that keeps it there. Pure tensor code.

A packed block joins documents with a separator ([SEP] for encoders, EOS for decoders), so the boundaries are in the
block itself, whether it came from the streaming packer or from pre-tokenized shards:

    [CLS]  a  a  a [SEP]  b  b [SEP]  c  c [SEP]     an encoder block (prefix [CLS], suffix [SEP])
      0    0  0  0   0    1  1   1    2  2   2       document_ids
      0    1  2  3   4    0  1   2    0  1   2       document_position_ids

A separator ends its document; the block's prefix belongs to the first document and its suffix to the last (a suffix
right after a document's own separator joins that document instead of opening an empty one). Padding
(attention_mask 0) is document -1: it attends to padding only and no real token attends to it, so no row of the mask
is empty (SDPA returns NaN for a row with nothing to attend to, and a NaN value row poisons every row that reads it).

Shapes: B = batch size, L = sequence length. The mask is O(B x L x L) booleans, built where the model runs
(sslnlp.models.modeling.model_inputs); batches carry only ``document_ids`` [B, L].
"""

from __future__ import annotations

import torch


def document_ids(input_ids: torch.Tensor, separator_id: int, attention_mask: torch.Tensor | None = None,
                 block_suffix: bool = False) -> torch.Tensor:
    """The document of every token: long [B, L], 0 for the first document of a row, -1 on padding.

    Args:
        input_ids: [B, L] token ids of packed blocks.
        separator_id: the id that ends each document ([SEP] / EOS: ``BlockLayout.separator``).
        attention_mask: [B, L], 0 on padding (None: no padding).
        block_suffix: the last real token of each row is the block's suffix separator (encoder layouts), which
            belongs to the last document even when that document's own separator comes right before it.
    """
    is_separator = (input_ids == separator_id).long()  # [B, L]
    ids = is_separator.cumsum(1) - is_separator  # separators strictly before each token
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if block_suffix and input_ids.shape[1] > 1:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        last = torch.where(valid, positions, 0).amax(1, keepdim=True)  # [B, 1], the suffix
        ids = ids.scatter(1, last, ids.gather(1, (last - 1).clamp(min=0)))
    return ids.masked_fill(~valid, -1)


def document_starts(document_ids: torch.Tensor) -> torch.Tensor:
    """Bool [B, L]: True on the first token of each document (and of each row's padding)."""
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    return starts


def document_position_ids(document_ids: torch.Tensor) -> torch.Tensor:
    """Position of every token inside its document: long [B, L], 0 at each document's first token."""
    positions = torch.arange(document_ids.shape[1], device=document_ids.device).expand_as(document_ids)
    first = torch.where(document_starts(document_ids), positions, 0).cummax(1).values  # [B, L]
    return positions - first


def document_attention_mask(document_ids: torch.Tensor, causal: bool = False,
                            window: int | None = None) -> torch.Tensor:
    """Bool [B, 1, L, L], True where query token q may attend to key token k: the same document (padding: the same
    row's padding), and k <= q when ``causal``, and |q - k| <= ``window`` when given (sliding-window layers)."""
    allowed = document_ids[:, :, None] == document_ids[:, None, :]  # [B, Lq, Lk]
    length = document_ids.shape[1]
    if causal or window is not None:
        offsets = torch.arange(length, device=document_ids.device)
        distance = offsets[:, None] - offsets[None, :]  # [Lq, Lk]: q - k
        if causal:
            allowed = allowed & (distance >= 0)
        if window is not None:
            allowed = allowed & (distance.abs() <= window)
    return allowed[:, None]


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask as the additive one eager attention adds to its scores: 0 where allowed, the dtype's lowest
    value elsewhere (what transformers' own eager masks hold)."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def varlen_lengths(document_ids: torch.Tensor) -> dict:
    """Flash-attention's variable-length arguments for documents as separate sequences of the flattened batch:
    ``cu_seq_lens_q`` / ``cu_seq_lens_k`` (int32 [S + 1], the offsets of the S documents and padding runs in the
    B x L tokens) and ``max_length_q`` / ``max_length_k`` (the longest). transformers' flash-attention path takes
    them as keyword arguments; it infers them from position ids alone only for a batch of one row."""
    starts = document_starts(document_ids).flatten()
    offsets = torch.nonzero(starts).flatten()
    total = torch.tensor([document_ids.numel()], device=document_ids.device)
    cumulative = torch.cat([offsets, total]).to(torch.int32)
    longest = int(cumulative.diff().max())
    return {"cu_seq_lens_q": cumulative, "cu_seq_lens_k": cumulative, "max_length_q": longest, "max_length_k": longest}


class DocumentCollator:
    """Wraps a collator: its batches also carry ``document_ids`` [B, L] (the objective's block layout says what
    separates documents). The ids are read from the collated ``input_ids``: collators never write a separator there
    (special tokens are never masked, and random replacements are drawn among the other tokens), so they mark the
    same boundaries as the blocks. Masks and targets are the wrapped collator's, unchanged.

    Args:
        collator: the objective's collator (state_dict / load_state_dict are passed through).
        separator_id: the layout's separator.
        block_suffix: the layout ends each block with the separator (encoders).
    """

    def __init__(self, collator, separator_id: int, block_suffix: bool):
        self.collator = collator
        self.separator_id = separator_id
        self.block_suffix = block_suffix

    def state_dict(self) -> dict:
        return self.collator.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.collator.load_state_dict(state)

    def __call__(self, features) -> dict:
        batch = self.collator(features)
        batch["document_ids"] = document_ids(batch["input_ids"], self.separator_id, batch.get("attention_mask"),
                                             self.block_suffix)
        return batch
