"""Segments: each document cut into padded rows of at most ``segment_tokens`` tokens, never across documents, or
pairs of consecutive segments of one document. What contrastive objectives read: a view is one piece of text.

A layout of its own (``SegmentLayout``) read from a corpus by ``SegmentBlocks``, through the same rank/worker
sharding and ``BlockStream`` as packed blocks; the stream batches segments with others of about their length.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from sslnlp.data.packing import BlockLayout, CorpusBlocks


@dataclass(frozen=True)
class SegmentLayout:
    """``prefix`` segment ``suffix`` rows, right-padded, with an attention mask; an objective asks for it
    (``Objective.block_layout``).

    Args:
        prefix, suffix: ids around every segment ([CLS] ... [SEP]).
        separator: the id that ends a document in packed layouts (kept for the collators that ask for it).
        segment_tokens: at most this many tokens of a document per segment.
        min_segment_tokens: shorter segments (a document's tail) are dropped.
        pairs: each row holds two consecutive segments of one document (segments 0 and 1, 2 and 3, ...; an unpaired
            last one is dropped): input_ids and attention_mask [2, L] per row, plus the row's ``document`` (a
            checksum of the document's tokens, so that rows of one document can be told apart in a batch).
    """

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    separator: int
    segment_tokens: int
    min_segment_tokens: int = 1
    pairs: bool = False
    word_starts = False  # segments carry no word starts (no whole-word masking of views)

    @classmethod
    def encoder(cls, tokenizer, segment_tokens: int, min_segment_tokens: int = 1, pairs: bool = False) -> "SegmentLayout":
        """[CLS] segment [SEP] rows (cls/sep, else bos/eos)."""
        packed = BlockLayout.encoder(tokenizer)
        return cls(packed.prefix, packed.suffix, packed.separator, segment_tokens, min_segment_tokens, pairs)


class SegmentPacker:
    """Cuts each document into consecutive segments of at most ``segment_tokens`` tokens (the tail kept when it has
    ``min_segment_tokens``), one row per segment: prefix + segment + suffix, right-padded to ``max_seq_length``, with
    an attention mask. With ``pairs``, a row holds two consecutive segments of one document ([n, 2, L]) and the
    document's checksum. Nothing carries over between documents, so the state is empty."""

    def __init__(self, max_seq_length: int, prefix: list[int], suffix: list[int], pad_token_id: int,
                 segment_tokens: int, min_segment_tokens: int, pairs: bool = False):
        self.max_seq_length = max_seq_length
        self.prefix = np.asarray(prefix, dtype=np.int32)
        self.suffix = np.asarray(suffix, dtype=np.int32)
        self.segment_tokens = min(segment_tokens, max_seq_length - len(prefix) - len(suffix))
        if self.segment_tokens < 1:
            raise ValueError(f"max_seq_length={max_seq_length} leaves no room for a segment between the special tokens")
        self.min_segment_tokens = max(1, min_segment_tokens)
        self.pad_token_id = pad_token_id
        self.pairs = pairs

    def _segments(self, ids) -> list:
        pieces = [ids[start: start + self.segment_tokens] for start in range(0, len(ids), self.segment_tokens)]
        return [piece for piece in pieces if len(piece) >= self.min_segment_tokens]

    def _rows(self, pieces: list) -> tuple[np.ndarray, np.ndarray]:
        rows = np.full((len(pieces), self.max_seq_length), self.pad_token_id, dtype=np.int32)
        attention = np.zeros((len(pieces), self.max_seq_length), dtype=bool)
        for row, piece in enumerate(pieces):
            values = np.concatenate([self.prefix, np.asarray(piece, dtype=np.int32), self.suffix])
            rows[row, : len(values)] = values
            attention[row, : len(values)] = True
        return rows, attention

    def add(self, documents_ids: list[list[int]]) -> dict:
        """The documents' rows, in order: ``input_ids`` int32 and ``attention_mask`` bool, [n, L] (pairs: [n, 2, L],
        plus ``document`` int64 [n])."""
        if not self.pairs:
            rows, attention = self._rows([piece for ids in documents_ids for piece in self._segments(ids)])
            return {"input_ids": rows, "attention_mask": attention}
        pieces, documents = [], []
        for ids in documents_ids:
            segments = self._segments(ids)
            pairs = len(segments) // 2
            pieces.extend(segments[: 2 * pairs])
            documents.extend([zlib.crc32(np.asarray(ids, dtype=np.int32).tobytes())] * pairs)
        rows, attention = self._rows(pieces)
        return {"input_ids": rows.reshape(-1, 2, self.max_seq_length),
                "attention_mask": attention.reshape(-1, 2, self.max_seq_length),
                "document": np.asarray(documents, dtype=np.int64)}

    def state(self) -> dict:
        return {}

    @staticmethod
    def merged_state(states: list[dict]) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass


class SegmentBlocks(CorpusBlocks):
    """Rows of segments (or pairs) cut from a corpus as it streams. Each chunk: ``input_ids`` int32 and
    ``attention_mask`` bool, [n, L] (pairs: [n, 2, L], plus ``document`` int64 [n]), ``shard``, ``state``.
    Arguments: those of ``CorpusBlocks`` (``layout``: a ``SegmentLayout``)."""

    bucket_by_length = True  # padded rows: batched with rows of about their length, so padding stays small

    def new_packer(self) -> SegmentPacker:
        layout = self.layout
        return SegmentPacker(self.max_seq_length, list(layout.prefix), list(layout.suffix), self.pad_token_id,
                             layout.segment_tokens, layout.min_segment_tokens, layout.pairs)

    def rows(self, packer: SegmentPacker, encodings: list) -> dict:
        return packer.add([e.ids for e in encodings])
