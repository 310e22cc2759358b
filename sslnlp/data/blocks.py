"""The interface every block source has, and the stream that reads any of them.

A block source (``BlockSource``) yields *chunks*: dicts of numpy arrays with one row per block (``input_ids`` [n, L]
and whatever else its layout carries: ``word_starts``, ``attention_mask``, ``document``), the global ``shard`` they
come from and that shard's ``state`` after them. The rows of a split are divided into ``ranks x workers`` shards;
which shards a rank reads and which one a DataLoader worker reads is decided here, once, for every source:

    PackedBlocks    (packing.py)    documents tokenized and packed into full blocks as they stream
    SegmentBlocks   (segments.py)   documents cut into padded segments (or pairs of them): contrastive views
    PreparedBlocks  (prepared.py)   full blocks read from the Arrow shards ``sslnlp prepare`` wrote

``BlockStream`` (main process) reads a source through DataLoader workers, keeps a seeded shuffle buffer, batches and
collates; its ``state_dict()`` holds exactly what was consumed, so a resume re-reads nothing and skips nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


class BlockSource(torch.utils.data.IterableDataset):
    """Chunks of blocks for one rank, one shard per DataLoader worker. Subclasses implement ``iter_shard``.

    Set ``shard_states`` / ``worker_rotation`` before iterating to resume (``BlockStream`` does this).

    Args:
        layout: the objective's layout of a block (special tokens, word starts, segments).
        rank, world_size: this process's place among the distributed ranks.
        num_workers: DataLoader workers per rank (0: the main process reads one shard).
    """

    bucket_by_length = False  # padded rows of varied length are batched with rows of about their length
    global_order = False  # the source orders blocks the same for any number of readers (no stream shuffle on top)

    def __init__(self, *, layout, rank: int = 0, world_size: int = 1, num_workers: int = 0):
        super().__init__()
        self.layout = layout
        self.rank, self.world_size = rank, world_size
        self.workers_per_rank = max(1, num_workers)
        self.shard_states: dict[int, dict] = {}
        self.worker_rotation = 0

    @property
    def shard_count(self) -> int:
        """Shards of the whole run: ranks x workers, each read by exactly one (rank, worker)."""
        return self.world_size * self.workers_per_rank

    def shards_of_rank(self) -> list[int]:
        return [self.rank * self.workers_per_rank + slot for slot in range(self.workers_per_rank)]

    def __iter__(self) -> Iterator[dict]:
        # worker_rotation: after a resume the first chunk comes from the worker that was next in line
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        shard = self.rank * self.workers_per_rank + (worker + self.worker_rotation) % self.workers_per_rank
        return self.iter_shard(shard, self.shard_states.get(shard))

    def iter_shard(self, shard: int, state: dict | None = None) -> Iterator[dict]:
        """Chunks of one shard, resuming after ``state`` (a ``chunk['state']`` seen earlier) when given."""
        raise NotImplementedError

    def resume_state(self, saved: list[dict]) -> tuple[dict, dict]:
        """This rank's stream state (``BlockStream.state_dict``) from the states every rank of a checkpoint saved (in
        rank order), and what the resume keeps. The same shards: exactly where they were; sources that can continue
        on another number of shards override this."""
        check_same_shards(saved[0]["shard_count"], self.shard_count)
        return saved[self.rank], {"exact": True}


def check_same_shards(saved: int, running: int) -> None:
    """Refuse a data position made with another number of shards than this run reads, in one line."""
    if saved != running:
        raise ValueError(f"the saved data position was made with {saved} shards (ranks x workers) but this run has "
                         f"{running}; resume with the same number of processes and data.num_workers")


def _identity(chunk):
    return chunk


class BlockStream:
    """Main-process iterator over batches of blocks for one rank: DataLoader workers, shuffle buffer, collation.

    ``state_dict()`` captures exactly what was consumed (each shard's state after the last chunk taken from it, the
    shuffle buffer and its RNG); ``load_state_dict()`` before iterating resumes there.

    Args:
        dataset: the rank's BlockSource (PackedBlocks, SegmentBlocks or PreparedBlocks).
        batch_size: blocks per batch.
        collate: function(dict of tensors [B, L]) -> model batch (a masking collator), or None for raw blocks.
        num_workers: DataLoader worker processes (must match ``dataset``'s).
        shuffle_buffer_size: blocks held for shuffling; 0 keeps stream order (as does a source in global order).
        seed: shuffle seed (the rank is mixed in); with a source in global order, the seed of each micro-batch's
            masks together with its first block's position, so masks do not depend on who reads the batch.
        drop_last: on a finite stream, drop a final batch smaller than batch_size.
    """

    def __init__(self, dataset: BlockSource, batch_size: int, collate=None, *, num_workers: int = 0,
                 shuffle_buffer_size: int = 0, seed: int = 0, drop_last: bool = False, prefetch_factor: int = 4):
        if num_workers and dataset.workers_per_rank != num_workers:
            raise ValueError("BlockStream.num_workers must equal its block source's num_workers")
        self.dataset = dataset
        self.batch_size = batch_size
        self.collate = collate
        self.num_workers = num_workers
        self.shuffle_buffer_size = shuffle_buffer_size
        self.drop_last = drop_last
        self.prefetch_factor = prefetch_factor
        self.seed = seed
        self.block_length: int | None = None  # set between batches: cut the blocks into shorter ones (BlockLayout.cut)
        self.mask_seeding = torch.Generator()  # reseeded per micro-batch when the source is in global order
        self.rng = np.random.default_rng([seed, dataset.rank])
        if dataset.global_order:
            self.shuffle_buffer_size = 0
        self.bucket_by_length = dataset.bucket_by_length
        self.buffer: list[dict] = []  # one entry per block: {"input_ids": [L], ...}
        self.shard_states: dict[int, dict] = {}
        self.chunks_consumed = 0
        self.blocks_consumed = 0

    def _chunks(self) -> Iterator[dict]:
        self.dataset.shard_states = dict(self.shard_states)
        self.dataset.worker_rotation = self.chunks_consumed % self.dataset.workers_per_rank
        if self.num_workers == 0:
            return iter(self.dataset)
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers,
                                             prefetch_factor=self.prefetch_factor, collate_fn=_identity)
        return iter(loader)

    def __iter__(self) -> Iterator[dict]:
        chunks = self._chunks()
        exhausted = False
        while True:
            while not exhausted and len(self.buffer) < max(self.shuffle_buffer_size, self.batch_size):
                chunk = next(chunks, None)
                if chunk is None:
                    exhausted = True
                    break
                self.chunks_consumed += 1
                if chunk["state"] is not None:
                    self.shard_states[chunk["shard"]] = chunk["state"]
                keys = [k for k in ("input_ids", "word_starts", "attention_mask", "document", "position") if k in chunk]
                for row in range(len(chunk["input_ids"])):
                    self.buffer.append({k: chunk[k][row] for k in keys})
            if not self.buffer or (exhausted and self.drop_last and len(self.buffer) < self.batch_size):
                return
            take = min(self.batch_size, len(self.buffer))
            if self.shuffle_buffer_size and self.bucket_by_length:
                picked = self._similar_lengths(take)
            elif self.shuffle_buffer_size:
                picked = []
                for _ in range(take):  # swap-remove a random block: O(1) per block
                    index = int(self.rng.integers(len(self.buffer)))
                    self.buffer[index], self.buffer[-1] = self.buffer[-1], self.buffer[index]
                    picked.append(self.buffer.pop())
            else:
                picked, self.buffer = self.buffer[:take], self.buffer[take:]
            self.blocks_consumed += take
            if any("attention_mask" in block for block in picked):  # a padded final block: every row gets a mask
                for block in picked:
                    block.setdefault("attention_mask", np.ones(block["input_ids"].shape[-1], dtype=bool))
            batch = {key: torch.from_numpy(np.stack([block[key] for block in picked])) for key in picked[0]}
            batch["input_ids"] = batch["input_ids"].long()
            if self.block_length:  # sequence-length warmup: the same text in shorter blocks
                batch = self.dataset.layout.cut(batch, self.block_length)
            yield self._collate(batch)

    def _similar_lengths(self, take: int) -> list[dict]:
        """``take`` blocks of the buffer: a random one and those closest to its length (ties broken at random)."""
        lengths = np.fromiter((int(block["attention_mask"].sum()) for block in self.buffer), dtype=np.int64,
                              count=len(self.buffer))
        anchor = int(self.rng.integers(len(self.buffer)))
        order = np.lexsort((self.rng.random(len(self.buffer)), np.abs(lengths - lengths[anchor])))[:take]
        chosen = set(order.tolist())
        picked = [self.buffer[index] for index in order]
        self.buffer = [block for index, block in enumerate(self.buffer) if index not in chosen]
        return picked

    def _collate(self, batch: dict) -> dict:
        position = batch.pop("position", None)
        if self.collate is None:
            return batch
        if position is not None:  # the micro-batch's masks follow from where it is in the global order
            seed = (self.seed * 2**40 + int(position[0])) % 2**63  # MT19937's seeding scrambles nearby seeds
            self.collate.load_state_dict({"generator": self.mask_seeding.manual_seed(seed).get_state()})
        # Masking touches ~B x L elements: a parallel region costs more than it saves, and on a busy CPU each one
        # waits for a descheduled worker thread (measured 2-9 ms per batch instead of 0.3 ms).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self.collate(batch)
        finally:
            torch.set_num_threads(threads)

    @property
    def epochs(self) -> int:
        """Passes over this rank's data begun so far (1 during the first epoch; 0 before any data)."""
        return max((state["epoch"] + 1 for state in self.shard_states.values() if state), default=0)

    def state_dict(self) -> dict:
        """Everything needed to continue exactly after the last batch yielded (JSON-friendly except numpy arrays)."""
        return {
            "shard_states": {str(k): v for k, v in self.shard_states.items()},
            "chunks_consumed": self.chunks_consumed,
            "blocks_consumed": self.blocks_consumed,
            "buffer": [{k: v.tolist() for k, v in block.items()} for block in self.buffer],
            "rng": self.rng.bit_generator.state,
            "shard_count": self.dataset.shard_count,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (this rank's, or what ``BlockSource.resume_state`` made of another layout's)."""
        check_same_shards(state["shard_count"], self.dataset.shard_count)
        self.shard_states = {int(k): v for k, v in state["shard_states"].items()}
        self.chunks_consumed = state["chunks_consumed"]
        self.blocks_consumed = state["blocks_consumed"]
        dtypes = {"input_ids": np.int32, "word_starts": bool, "attention_mask": bool, "document": np.int64,
                  "position": np.int64}
        self.buffer = [{k: np.asarray(v, dtype=dtypes[k]) for k, v in block.items()} for block in state["buffer"]]
        if "rng" in state:  # a rank new to the run (resumed on more processes) keeps its own fresh generator
            self.rng.bit_generator.state = state["rng"]
