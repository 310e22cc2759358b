"""Tokenize documents and pack them into fixed-length blocks as they stream; resume exactly.

Data flow (one direction only):

    Corpus.iter_documents(shard)                    documents of this shard, with resumable positions
      -> tokenize a batch of documents                (fast tokenizer, batched, no special tokens)
      -> join with the layout's separator            and append to the carry-over of the previous batch
      -> cut blocks of exactly max_seq_length         ([CLS] content [SEP] per block for encoders)
      -> one "chunk" per document batch               (in a DataLoader worker, with the shard's state after it)
    BlockStream (main process)
      -> shuffle buffer (seeded) -> batches of blocks -> collator

Nothing is dropped: the tokens left over after the last full block carry over to the next document batch, and to
the next epoch. The state of a shard after a chunk is tiny (corpus position, epoch, carry-over tokens), so every chunk
carries it and the main process always knows the state of what it consumed; ``BlockStream.state_dict()`` adds the
shuffle buffer and its RNG, and resuming from it re-reads nothing that was consumed.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from sslnlp.data.blocks import BlockSource
from sslnlp.data.corpus import Corpus, CorpusError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BlockLayout:
    """How packed blocks look: ``prefix`` content ``suffix``, documents joined by ``separator``; an objective says
    which layout it wants (``Objective.block_layout``).

    Args:
        prefix: ids at the start of every block ([CLS] for encoders, nothing for decoders).
        suffix: ids at the end of every block ([SEP] for encoders).
        separator: id placed after every document ([SEP] for encoders, EOS for decoders).
        word_starts: also carry word starts (whole-word and span masking need them).
    """

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    separator: int
    word_starts: bool = False

    @classmethod
    def encoder(cls, tokenizer, word_starts: bool = False) -> "BlockLayout":
        """[CLS] content [SEP] blocks, [SEP] between documents (cls/sep, else bos/eos)."""
        start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        if start is None or end is None:
            raise ValueError("encoder packing needs a tokenizer with cls/sep (or bos/eos) tokens")
        return cls((start,), (end,), end, word_starts)

    @property
    def specials(self) -> int:
        """Special tokens of a block (prefix and suffix)."""
        return len(self.prefix) + len(self.suffix)

    def cut(self, batch: dict, length: int) -> dict:
        """A batch of blocks {input_ids [B, L], word_starts?, attention_mask?, position?} as shorter blocks of
        ``length`` (sequence-length warmup): each block's content cut into equal pieces, each given the block's prefix
        and suffix, so the same text is trained on in shorter sequences. ``length - specials`` must divide the
        content (``sslnlp.training.warmups.block_length_at`` picks such lengths); ``position`` keeps one entry per
        original block (it seeds the masks of the micro-batch)."""
        import torch

        rows, full = batch["input_ids"].shape
        start, content, piece = len(self.prefix), full - self.specials, length - self.specials
        if length >= full:
            return batch
        if piece < 1 or content % piece:
            raise ValueError(f"a block of {full} tokens cannot be cut into blocks of {length}")
        count = rows * content // piece  # the shorter blocks
        shorter = dict(batch)
        for key in ("input_ids", "word_starts", "attention_mask"):
            if key not in batch:
                continue
            middle = batch[key][:, start:start + content].reshape(count, piece)
            if key == "input_ids":
                before = torch.tensor(self.prefix, dtype=middle.dtype).expand(count, -1)
                after = torch.tensor(self.suffix, dtype=middle.dtype).expand(count, -1)
            elif key == "attention_mask":  # the specials attend where their piece has any content
                present = middle.any(dim=1, keepdim=True)
                before, after = present.expand(-1, len(self.prefix)), present.expand(-1, len(self.suffix))
            else:  # no special token starts a word
                before, after = middle.new_zeros(count, len(self.prefix)), middle.new_zeros(count, len(self.suffix))
            shorter[key] = torch.cat([before, middle, after], dim=1)
        return shorter

    @classmethod
    def decoder(cls, tokenizer) -> "BlockLayout":
        """Bare content, EOS after each document (eos, else sep)."""
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        if eos is None:
            raise ValueError("decoder packing needs a tokenizer with an eos token")
        return cls((), (), eos, False)


class BlockPacker:
    """Appends tokenized documents to a carry-over buffer and cuts exact-length blocks. Pure numpy, no I/O.

    Word starts (True on the first token of each word) travel with the tokens so whole-word and span masking work
    on packed blocks; a word cut by a block boundary continues, without a start flag, at the top of the next block.
    """

    def __init__(self, max_seq_length: int, prefix: list[int], suffix: list[int], separator: int, with_word_starts: bool):
        self.content_length = max_seq_length - len(prefix) - len(suffix)
        if self.content_length < 1:
            raise ValueError(f"max_seq_length={max_seq_length} leaves no room for tokens between the block's special tokens")
        self.prefix = np.asarray(prefix, dtype=np.int32)
        self.suffix = np.asarray(suffix, dtype=np.int32)
        self.separator = separator
        self.with_word_starts = with_word_starts
        self.carry_ids = np.zeros(0, dtype=np.int32)
        self.carry_starts = np.zeros(0, dtype=bool)

    def add(self, documents_ids: list[list[int]], documents_starts: list[np.ndarray] | None):
        """Add documents; return (input_ids [n, L] int32, word_starts [n, L] bool or None) for the full blocks."""
        pieces = [self.carry_ids]
        for ids in documents_ids:
            pieces.append(np.asarray(ids, dtype=np.int32))
            pieces.append(np.asarray([self.separator], dtype=np.int32))
        stream = np.concatenate(pieces)
        starts = None
        if self.with_word_starts:
            start_pieces = [self.carry_starts]
            for word_starts in documents_starts:
                start_pieces.append(word_starts)
                start_pieces.append(np.zeros(1, dtype=bool))  # the separator belongs to no word
            starts = np.concatenate(start_pieces)
        return self._cut(stream, starts)

    def _cut(self, stream: np.ndarray, starts: np.ndarray | None, flush: bool = False):
        count = len(stream) // self.content_length
        used = count * self.content_length
        self.carry_ids = stream[used:]
        content = stream[:used].reshape(count, self.content_length)
        blocks = np.concatenate([np.broadcast_to(self.prefix, (count, len(self.prefix))), content,
                                 np.broadcast_to(self.suffix, (count, len(self.suffix)))], axis=1)
        block_starts = None
        if starts is not None:
            self.carry_starts = starts[used:]
            block_starts = np.zeros(blocks.shape, dtype=bool)
            block_starts[:, len(self.prefix): len(self.prefix) + self.content_length] = starts[:used].reshape(count, -1)
        return blocks, block_starts

    def state(self) -> dict:
        return {"carry_ids": self.carry_ids.tolist(), "carry_starts": self.carry_starts.tolist()}

    @staticmethod
    def merged_state(states: list[dict]) -> dict:
        """One packer's state carrying the tokens of several (resumed on fewer shards): their carry-overs in turn."""
        return {"carry_ids": [token for state in states for token in state["carry_ids"]],
                "carry_starts": [start for state in states for start in state["carry_starts"]]}

    def load_state(self, state: dict) -> None:
        self.carry_ids = np.asarray(state["carry_ids"], dtype=np.int32)
        self.carry_starts = np.asarray(state["carry_starts"], dtype=bool)


def packing_backend(tokenizer):
    """An independent copy of the tokenizer's Rust backend with truncation and padding off: packing must see every
    token of every document. A tokenizer.json from the Hub often enables truncation (to 512), and calling a
    transformers tokenizer with truncation=True or padding switches it on in the shared backend; either would
    silently cut documents here."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend


def word_starts_of(encoding) -> np.ndarray:
    """Boolean array [num_tokens]: True where a token starts a new word (word ids from the pre-tokenizer)."""
    word_ids = np.asarray([-1 if w is None else w for w in encoding.word_ids], dtype=np.int64)
    starts = np.ones(len(word_ids), dtype=bool)
    starts[1:] = word_ids[1:] != word_ids[:-1]
    return starts


class CorpusBlocks(BlockSource):
    """Rows made from a corpus as it streams: each shard reads its documents (``Corpus.iter_documents``), tokenizes
    ``documents_per_batch`` of them at a time and turns them into rows with a packer; one chunk per document batch,
    carrying the shard's state after it (epoch, corpus position, the packer's carry-over). Subclasses say how
    documents become rows (``new_packer``, ``rows``, ``last_rows``).

    Args:
        corpus: the document stream.
        tokenizer: a fast ``transformers`` tokenizer.
        max_seq_length: row length L, special tokens included.
        layout, rank, world_size, num_workers: as for every ``BlockSource``.
        documents_per_batch: documents tokenized per call of the batched tokenizer (one chunk).
        repeat: start a new epoch when the shard runs out (training); False ends after one pass (evaluation).
    """

    def __init__(self, corpus: Corpus, tokenizer, max_seq_length: int, *, layout, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, documents_per_batch: int = 64, repeat: bool = True):
        super().__init__(layout=layout, rank=rank, world_size=world_size, num_workers=num_workers)
        self.corpus = corpus
        self.tokenizer = tokenizer
        self.backend = packing_backend(tokenizer)
        self.max_seq_length = max_seq_length
        self.documents_per_batch = documents_per_batch
        self.repeat = repeat
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else layout.separator

    def new_packer(self):
        """A packer with ``add``, ``state()`` and ``load_state(state)``."""
        raise NotImplementedError

    def encode(self, texts: list[str]) -> list:
        return self.backend.encode_batch_fast(texts, add_special_tokens=False)

    def rows(self, packer, encodings: list) -> dict:
        """The rows one batch of tokenized documents gives (arrays with one row per block)."""
        raise NotImplementedError

    def last_rows(self, packer) -> dict | None:
        """What is left in the packer at the end of a finite pass, as rows (None: nothing)."""
        return None

    def iter_shard(self, shard: int, state: dict | None = None) -> Iterator[dict]:
        packer = self.new_packer()
        epoch, position = 0, None
        if state:
            epoch, position = state["epoch"], state["position"]
            packer.load_state(state["packer"])
        while True:
            documents_in_epoch, fresh_epoch = 0, position is None
            if position is None:
                position = self.corpus.epoch_start(epoch)
            stream = self.corpus.iter_documents(position, shard, self.shard_count)
            while True:
                batch = list(itertools.islice(stream, self.documents_per_batch))
                if not batch:
                    break
                documents_in_epoch += len(batch)
                position = batch[-1][1]
                chunk = {"shard": shard, **self.rows(packer, self.encode([text for text, _ in batch]))}
                chunk["state"] = {"epoch": epoch, "position": position, "packer": packer.state()}
                yield chunk
            if not self.repeat:
                break
            if documents_in_epoch == 0 and fresh_epoch:
                raise CorpusError(f"corpus {self.corpus.name} has no documents for shard {shard} of {self.shard_count}: "
                                  "it has fewer documents than ranks x workers, or is empty")
            if not self.corpus.reiterable:
                raise CorpusError(f"corpus {self.corpus.name} ran out after one epoch and cannot be read again; pass a "
                                  "list, files or a function returning a generator, or lower the training budget")
            epoch, position = epoch + 1, None
        last = self.last_rows(packer)
        if last is not None:
            yield {"shard": shard, "state": None, **last}

    def resume_state(self, saved: list[dict]) -> tuple[dict, dict]:
        """On other shards (another number of processes or workers): every new shard continues from the furthest
        saved position, so no document is read twice, and what was read but not yet trained on is handed over: the
        blocks waiting in the saved shuffle buffers (dealt out to the new ranks in turn) and the tokens in the
        packers' carry-over (old shard i's to new shard i mod the new count). What is lost is counted, not guessed:
        the records between each slower shard's position and the furthest one (counted within one epoch; a shard an
        epoch behind is named instead)."""
        old_count = saved[0]["shard_count"]
        if old_count == self.shard_count:
            return super().resume_state(saved)
        states = {int(shard): state for rank_state in saved for shard, state in rank_state["shard_states"].items()}
        places = {shard: (states[shard]["epoch"], self.corpus.records_before(states[shard]["position"]))
                  if states.get(shard) else (0, 0) for shard in range(old_count)}
        furthest = max(places, key=lambda shard: places[shard])
        epoch, record = places[furthest]

        def records_of(shard: int, before: int) -> int:  # records i < before with i mod old_count == shard
            return max(0, (before - shard + old_count - 1) // old_count)

        skipped = sum(records_of(shard, record) - records_of(shard, done) for shard, (at, done) in places.items()
                      if at == epoch)
        shard_states = {}
        for shard in self.shards_of_rank():
            carried = [states[old]["packer"] for old in sorted(states) if states[old] and old % self.shard_count == shard]
            shard_states[str(shard)] = ({"epoch": epoch, "position": states[furthest]["position"],
                                         "packer": self.new_packer().merged_state(carried)}
                                        if states.get(furthest) else None)
        buffered = [block for rank_state in saved for block in rank_state["buffer"]]
        state = {"shard_states": shard_states, "chunks_consumed": 0, "blocks_consumed": 0,
                 "buffer": buffered[self.rank::self.world_size], "shard_count": self.shard_count}
        if self.rank < len(saved):
            state["rng"] = saved[self.rank]["rng"]
        report = {"data": "streaming", "exact": False, "epoch": epoch, "record": record, "records_skipped": skipped,
                  "shards_an_epoch_behind": sorted(shard for shard, (at, _) in places.items() if at != epoch),
                  "blocks_handed_over": len(buffered),
                  "tokens_handed_over": sum(len((shard_state or {}).get("packer", {}).get("carry_ids", []))
                                            for shard_state in states.values())}
        return state, report


class PackedBlocks(CorpusBlocks):
    """Full blocks packed from a corpus as it streams: documents joined by the layout's separator and cut into
    blocks of exactly ``max_seq_length`` (``BlockPacker``); nothing is dropped (the tail carries over).

    Each chunk: ``input_ids`` int32 [n, L], ``word_starts`` bool [n, L] (when the layout asks), ``shard``, ``state``.
    A finite pass (``repeat=False``) ends with the last partial block, padded, with an ``attention_mask``.
    Arguments: those of ``CorpusBlocks`` (``layout``: a ``BlockLayout``).
    """

    def new_packer(self) -> BlockPacker:
        layout = self.layout
        return BlockPacker(self.max_seq_length, list(layout.prefix), list(layout.suffix), layout.separator,
                           layout.word_starts)

    def encode(self, texts: list[str]) -> list:
        if self.layout.word_starts:  # word ids need the full encodings
            return self.backend.encode_batch(texts, add_special_tokens=False)
        return super().encode(texts)

    def rows(self, packer: BlockPacker, encodings: list) -> dict:
        starts = [word_starts_of(e) for e in encodings] if self.layout.word_starts else None
        blocks, block_starts = packer.add([e.ids for e in encodings], starts)
        return {"input_ids": blocks} | ({"word_starts": block_starts} if block_starts is not None else {})

    def last_rows(self, packer: BlockPacker) -> dict | None:
        length = len(packer.carry_ids)
        if not length:
            return None
        block = np.full((1, self.max_seq_length), self.pad_token_id, dtype=np.int32)
        row = np.concatenate([packer.prefix, packer.carry_ids, packer.suffix])
        block[0, : len(row)] = row
        attention = np.zeros((1, self.max_seq_length), dtype=bool)
        attention[0, : len(row)] = True
        rows = {"input_ids": block, "attention_mask": attention, "content_length": length}
        if self.layout.word_starts:
            starts = np.zeros((1, self.max_seq_length), dtype=bool)
            starts[0, len(packer.prefix): len(packer.prefix) + length] = packer.carry_starts
            rows["word_starts"] = starts
        return rows
