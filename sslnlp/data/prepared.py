"""Prepared blocks: the directory ``sslnlp prepare`` writes (``sslnlp.data.prepare``) and its reader, so that a
run trains with no tokenization at train time.

    sslnlp prepare recipes/cram-cpu.yaml --output-dir data/cram-prepared          # every core of this machine
    sslnlp pretrain recipes/cram-cpu.yaml data.train_files=data/cram-prepared
    sslnlp pretrain ... data.train_files=s3://bucket/cram-prepared           # or hf://datasets/me/cram-prepared

Layout of a prepared directory (Arrow IPC stream files, the format of Hugging Face ``datasets``: each shard opens with
``datasets.Dataset.from_file`` for inspection)::

    manifest.json          settings (tokenizer sha256, max_seq_length, block layout), per split: shards with their
                           blocks, tokens and sha256, documents, tokens dropped at the end; "complete" when done
    tokenizer/             the tokenizer the blocks were made with (a run without a tokenizer of its own uses it)
    train/shard-00000.arrow    one row per packed block: input_ids (uint16, or int32 for vocabularies over 65,536),
    ...                        word_starts (uint8, when the objective masks whole words)
    validation/...         the held-out documents (data.validation_files or data.validation_holdout_every), packed

Reading (``PreparedBlocks``, a ``BlockSource`` like the streaming ``PackedBlocks``): one global order of the split's
blocks per epoch (chunks of ``CHUNK_BLOCKS`` stored blocks in a seeded order when ``data.shuffle_documents`` is set,
then windows of ``data.shuffle_buffer_size`` blocks permuted), cut into micro-steps (per-device batch x processes);
ranks take disjoint slices of each, so the blocks of a step do not depend on the number of processes or workers and
a run resumes on any number of them reading exactly what the uninterrupted run would have read. Blocks are taken from the memory-mapped
shards (memory stays flat in corpus size). A remote location (any fsspec URL: ``s3://``, ``gs://``,
``hf://datasets/...``) is read through fsspec, each shard file fetched once into a local cache (``SSLNLP_CACHE``,
default ``~/.cache/sslnlp``) and checked against the manifest's sha256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from sslnlp.data.blocks import BlockSource
from sslnlp.data.corpus import CorpusError
from sslnlp.data.packing import BlockLayout
from sslnlp.files import atomic_path

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "sslnlp-prepared-blocks"
VERSION = 1
CHUNK_BLOCKS = 64  # blocks per read (and per step of the shuffled order)


def is_prepared(source) -> bool:
    """True when ``source`` (a data.train_files value) names a prepared directory: local or remote."""
    if not isinstance(source, (str, os.PathLike)):
        return False
    location = os.fspath(source)
    if "://" in location:
        try:
            import fsspec

            filesystem, path = fsspec.core.url_to_fs(location)
            return filesystem.isfile(f"{path.rstrip('/')}/{MANIFEST}")
        except Exception:  # noqa: BLE001 - not a reachable prepared location: treated as text (which then fails)
            return False
    return (Path(os.path.expanduser(location)) / MANIFEST).is_file()


def check_not_half_prepared(source) -> None:
    """Refuse, in one line, a local directory that holds prepared shards but no manifest (an interrupted prepare's
    first moments, or a copy that left manifest.json behind): read as text it would fail on the tokenizer's JSON."""
    if not isinstance(source, (str, os.PathLike)) or "://" in os.fspath(source):
        return
    directory = Path(os.path.expanduser(os.fspath(source)))
    if directory.is_dir() and not (directory / MANIFEST).is_file() and (
            any(directory.glob("*/shard-*.arrow")) or (directory / "tokenizer" / "tokenizer.json").is_file()):
        raise CorpusError(f"data.train_files={os.fspath(source)} looks like a prepared directory without its {MANIFEST} "
                          "(an interrupted prepare, or a copy that left it behind); run the same sslnlp prepare "
                          f"command again to finish it, or copy {MANIFEST} with the shards")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**22), b""):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_sha256(tokenizer) -> str:
    """The same fingerprint a run's provenance records."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()


# ------------------------------------------------------------------------------------------------------- read


def cache_root() -> Path:
    return Path(os.path.expanduser(os.environ.get("SSLNLP_CACHE", "~/.cache/sslnlp")))


class PreparedData:
    """A prepared directory, local or at an fsspec URL: its manifest, its tokenizer, its splits.

    Args:
        location: the directory (or URL) ``sslnlp prepare`` wrote.
    """

    def __init__(self, location: str | os.PathLike):
        self.location = os.fspath(location).rstrip("/")
        self.remote = "://" in self.location
        self.local = Path(os.path.expanduser(self.location))
        try:
            text = self._read_text(MANIFEST)
        except (OSError, FileNotFoundError) as error:
            raise CorpusError(f"cannot read {self.location}/{MANIFEST} ({error}); give the directory sslnlp prepare "
                              "wrote") from error
        try:
            self.manifest = json.loads(text)
            self.settings = self.manifest["settings"]
        except (ValueError, KeyError) as error:
            raise CorpusError(f"{self.location}/{MANIFEST} is not a prepare manifest ({error}); prepare again") from error
        if not self.manifest.get("complete"):
            raise CorpusError(f"{self.location} is not completely prepared (the prepare was interrupted); run the "
                              "same sslnlp prepare command again to finish it")
        if self.settings.get("format") != FORMAT or self.settings.get("version") != VERSION:
            raise CorpusError(f"{self.location} holds format {self.settings.get('format')} version "
                              f"{self.settings.get('version')}; this sslnlp reads {FORMAT} version {VERSION}: prepare again")
        self.manifest_sha256 = hashlib.sha256(text.encode()).hexdigest()
        if self.remote:  # one cache folder per location and content: a prepare redone there is fetched anew
            place = hashlib.sha256(self.location.encode()).hexdigest()[:16]
            self.local = cache_root() / "prepared" / f"{place}-{self.manifest_sha256[:16]}"
            self.local.mkdir(parents=True, exist_ok=True)

    def _filesystem(self):
        import fsspec

        return fsspec.core.url_to_fs(self.location)

    def _read_text(self, relative: str) -> str:
        if not self.remote:
            return (self.local / relative).read_text()
        filesystem, root = self._filesystem()
        with filesystem.open(f"{root}/{relative}", "r") as handle:
            return handle.read()

    def fetch(self, relative: str, sha256: str | None = None) -> Path:
        """The local path of a file of the prepared directory (downloaded into the cache once when remote)."""
        local = self.local / relative
        if not self.remote or local.is_file():
            return local
        local.parent.mkdir(parents=True, exist_ok=True)
        filesystem, root = self._filesystem()
        with atomic_path(local, per_process=True) as partial:
            filesystem.get_file(f"{root}/{relative}", str(partial))
            if sha256 is not None and sha256_file(partial) != sha256:
                raise CorpusError(f"{self.location}/{relative} does not match the manifest's sha256 (changed after "
                                  "prepare, or a broken download); prepare again or retry")
        return local

    def tokenizer_path(self) -> Path:
        """The directory of the tokenizer the blocks were made with (fetched when remote)."""
        if self.remote:
            filesystem, root = self._filesystem()
            for path in filesystem.ls(f"{root}/tokenizer", detail=False):
                self.fetch(f"tokenizer/{Path(path).name}")
        return self.local / "tokenizer"

    def split(self, name: str) -> "PreparedSplit | None":
        return PreparedSplit(self, name) if name in self.manifest["splits"] else None

    def fingerprint(self) -> dict:
        return {"kind": "prepared", "manifest_sha256": self.manifest_sha256}

    def check(self, tokenizer, layout: BlockLayout, max_seq_length: int) -> None:
        """Refuse, in one line, a run whose tokenizer, block length or layout differ from the blocks'."""
        where = f"data.train_files={self.location}"
        if self.settings["tokenizer_sha256"] != tokenizer_sha256(tokenizer):
            raise CorpusError(f"{where} was prepared with another tokenizer (sha256 "
                              f"{self.settings['tokenizer_sha256'][:12]}, this run's {tokenizer_sha256(tokenizer)[:12]}); "
                              "prepare again with this run's tokenizer, or drop tokenizer.tokenizer_name_or_path to "
                              "use the prepared one")
        if self.settings["max_seq_length"] != max_seq_length:
            raise CorpusError(f"{where} holds blocks of {self.settings['max_seq_length']} tokens but this run has "
                              f"data.max_seq_length={max_seq_length}; set it to {self.settings['max_seq_length']} or "
                              "prepare again")
        if not isinstance(layout, BlockLayout):
            raise CorpusError(f"{where} holds packed blocks but this run's objective reads unpacked segments; train "
                              "it from text")
        stored = self.settings["layout"]
        if (stored["prefix"], stored["suffix"], stored["separator"]) != (list(layout.prefix), list(layout.suffix),
                                                                         layout.separator):
            raise CorpusError(f"{where} was prepared for another block layout (special tokens {stored['prefix']} ... "
                              f"{stored['suffix']}, separator {stored['separator']}); prepare again with this run's "
                              "objective")
        if layout.word_starts and not stored["word_starts"]:
            raise CorpusError(f"{where} has no word starts, which this run's masking needs; prepare again with this "
                              "run's objective (whole-word or span masking)")


class PreparedSplit:
    """The blocks of one split, addressed by global block index across its shard files (memory-mapped)."""

    reiterable = True

    def __init__(self, data: PreparedData, name: str):
        self.data, self.name = data, name
        self.shards = data.manifest["splits"][name]["shards"]
        self.ends = np.cumsum([shard["blocks"] for shard in self.shards])
        self.blocks = int(self.ends[-1]) if len(self.ends) else 0
        self.word_starts = bool(data.settings["layout"]["word_starts"])
        self._tables: dict[int, object] = {}
        self._views: dict[int, tuple] = {}

    def __getstate__(self):  # DataLoader workers map the files themselves
        return {**self.__dict__, "_tables": {}, "_views": {}}

    def fingerprint(self) -> dict:
        return {**self.data.fingerprint(), "split": self.name}

    def _table(self, index: int):
        if index not in self._tables:
            import pyarrow as pa

            shard = self.shards[index]
            path = self.data.fetch(f"{self.name}/{shard['file']}", shard["sha256"])
            try:
                table = pa.ipc.open_stream(pa.memory_map(str(path))).read_all()
            except (pa.ArrowInvalid, OSError) as error:
                state = "truncated or changed" if sha256_file(path) != shard["sha256"] else "unreadable"
                raise CorpusError(f"{path} is {state} since sslnlp prepare wrote it (its sha256 no longer matches "
                                  f"{MANIFEST}; {str(error).splitlines()[0][:80]}); prepare again into a new "
                                  "--output-dir, or copy the prepared directory whole") from None
            if table.num_rows != shard["blocks"]:
                raise CorpusError(f"{path} holds {table.num_rows} blocks where {MANIFEST} says {shard['blocks']}; "
                                  "prepare again into a new --output-dir, or copy the prepared directory whole")
            self._tables[index] = table
        return self._tables[index]

    def _rows(self, index: int) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray] | None]:
        """One shard's blocks as numpy views of its memory-mapped record batches (nothing copied): (ends of the
        batches, input_ids [n, L] per batch, word_starts [n, L] per batch or None)."""
        if index in self._views:
            return self._views[index]
        table = self._table(index)
        columns = {name: [chunk.flatten().to_numpy(zero_copy_only=True).reshape(len(chunk), -1)
                          for chunk in table.column(name).chunks]
                   for name in ("input_ids", "word_starts") if name in table.column_names}
        ends = np.cumsum([len(rows) for rows in columns["input_ids"]])
        self._views[index] = (ends, columns["input_ids"], columns.get("word_starts"))
        return self._views[index]

    def take(self, ids: np.ndarray, with_word_starts: bool) -> dict:
        """Blocks by global index, in the order given: {"input_ids": int32 [n, L], "word_starts": bool [n, L] (when
        asked)}. Only the rows taken are copied out of the memory-mapped shards."""
        ids = np.asarray(ids, dtype=np.int64)
        chunk: dict[str, np.ndarray] = {}
        shards = np.searchsorted(self.ends, ids, side="right")
        for shard in np.unique(shards):
            here = np.flatnonzero(shards == shard)
            local = ids[here] - (int(self.ends[shard - 1]) if shard else 0)
            ends, input_ids, word_starts = self._rows(int(shard))
            batches = np.searchsorted(ends, local, side="right")
            for batch in np.unique(batches):
                inside = batches == batch
                rows = local[inside] - (int(ends[batch - 1]) if batch else 0)
                for name, arrays, dtype in (("input_ids", input_ids, np.int32), ("word_starts", word_starts, bool)):
                    if name == "word_starts" and not with_word_starts:
                        continue
                    if name not in chunk:
                        chunk[name] = np.empty((len(ids), arrays[batch].shape[1]), dtype=dtype)
                    chunk[name][here[inside]] = arrays[batch][rows]
        return chunk


class PreparedBlocks(BlockSource):
    """Prepared blocks in one global order that does not depend on the number of processes or workers.

    The split is read as an endless stream of positions 0, 1, 2, ...; epoch ``e`` (positions ``e*N .. e*N+N-1``)
    visits the N blocks in ``epoch_order(e)``: chunks of ``CHUNK_BLOCKS`` stored blocks in a seeded order reshuffled
    every epoch (``shuffle``), then the blocks of every window of ``window`` positions permuted (a shuffle buffer
    without state). Every micro-batch takes the next ``batch_size x world_size`` positions (a micro-step): rank ``r``
    reads the r-th slice of ``batch_size``, and DataLoader worker ``w`` of ``n`` every n-th micro-step (the loader's
    round robin hands them over in order). An optimizer step of ``a`` accumulated micro-batches takes ``a``
    micro-steps, so the blocks of a step, and their split into micro-batches, are the same for ``N`` processes x ``a``
    micro-batches as for ``M`` processes x ``a N / M`` with the same per-device batch, whatever the workers: the
    position reached is all a resume needs, on any number of processes. Every block carries its ``position``, from
    which the masks of its micro-batch are drawn.

    Args:
        split: the PreparedSplit to read.
        layout: the run's BlockLayout (word starts are read only when it wants them).
        rank, world_size, num_workers: as for every ``BlockSource``.
        batch_size: blocks this rank takes per micro-batch (the per-device batch).
        shuffle: visit the chunks in a seeded order, reshuffled every epoch (else stored order).
        window: positions permuted together (``data.shuffle_buffer_size``; 0 or 1: none).
        seed: the order's seed.
        repeat: epochs without end (training); False reads the split once, in order (evaluation).
    """

    global_order = True  # BlockStream adds no shuffle of its own: the order is already the same for every layout

    def __init__(self, split: PreparedSplit, *, layout: BlockLayout, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, batch_size: int = CHUNK_BLOCKS, shuffle: bool = False, window: int = 0,
                 seed: int = 0, repeat: bool = True):
        super().__init__(layout=layout, rank=rank, world_size=world_size, num_workers=num_workers)
        self.split = split
        self.batch_size = batch_size
        self.shuffle, self.window, self.seed, self.repeat = shuffle, window, seed, repeat
        self._order: tuple[int, np.ndarray] | None = None
        if repeat and split.blocks < batch_size * world_size:  # a single pass may end on a partial micro-step
            raise CorpusError(f"{split.data.location} has {split.blocks} {split.name} blocks, fewer than one micro-step's "
                              f"{batch_size * world_size} (per-device batch x processes); prepare more text or use a "
                              "smaller batch")

    def __getstate__(self):  # DataLoader workers rebuild the order themselves
        return {**self.__dict__, "_order": None}

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The block ids in the order epoch ``epoch`` visits them."""
        if self._order is not None and self._order[0] == epoch:
            return self._order[1]
        order = np.arange(self.split.blocks)
        rng = np.random.default_rng([self.seed, epoch])
        if self.shuffle:
            chunks = rng.permutation(-(-len(order) // CHUNK_BLOCKS))
            order = np.concatenate([order[chunk * CHUNK_BLOCKS:(chunk + 1) * CHUNK_BLOCKS] for chunk in chunks])
        if self.window > 1:
            for start in range(0, len(order), self.window):
                window = order[start:start + self.window]
                window[:] = window[rng.permutation(len(window))]
        self._order = (epoch, order)
        return order

    def blocks_at(self, first: int, count: int) -> tuple[np.ndarray, int] | None:
        """(block ids, epoch) of the positions [first, first + count), or None past the end of a single pass."""
        blocks = self.split.blocks
        positions = np.arange(first, first + count)
        if not self.repeat:
            positions = positions[positions < blocks]
            if not len(positions):
                return None
        epochs = positions // blocks
        ids = np.empty(len(positions), dtype=np.int64)
        for epoch in np.unique(epochs):  # a step may straddle two epochs
            ids[epochs == epoch] = self.epoch_order(int(epoch))[positions[epochs == epoch] % blocks]
        return ids, int(epochs[-1])

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.iter_steps(worker, workers, (self.shard_states.get(0) or {}).get("position", 0))

    def iter_shard(self, shard: int, state: dict | None = None) -> Iterator[dict]:
        """All micro-steps from ``state`` on, read in this process (no DataLoader workers)."""
        return self.iter_steps(0, 1, (state or {}).get("position", 0))

    def iter_steps(self, worker: int, workers: int, start: int) -> Iterator[dict]:
        """This rank's slice of every ``workers``-th micro-step from ``start`` (a position at a micro-step boundary)
        on: one chunk per micro-step, its state the position after the whole micro-step (every rank's slices)."""
        step = self.batch_size * self.world_size
        first = start + worker * step
        while True:
            mine = first + self.rank * self.batch_size
            found = self.blocks_at(mine, self.batch_size)
            if found is None:
                return
            ids, epoch = found
            chunk = self.split.take(ids, self.layout.word_starts)
            chunk["position"] = np.arange(mine, mine + len(ids))
            chunk["shard"] = 0
            chunk["state"] = {"position": first + step, "epoch": epoch}
            yield chunk
            first += workers * step

    def resume_state(self, saved: list[dict]) -> tuple[dict, dict]:
        """Any number of processes and workers resumes at the position the saved run reached: every rank's state
        holds it, and the global order does not depend on who reads it."""
        state = dict(saved[0])
        if state.get("buffer"):
            raise ValueError("the saved data position is inside a step (blocks still buffered); resume with the "
                             "same number of processes and data.num_workers")
        position = (state["shard_states"].get("0") or {}).get("position", 0)
        return {**state, "shard_count": self.shard_count}, {"data": "prepared", "exact": True,
                                                            "position": position}
