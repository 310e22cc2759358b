"""Pre-tokenized shards: tokenize and pack a corpus once (``sslnlp prepare``), then train from the shards with no
tokenization at train time.

    sslnlp prepare recipes/cram-cpu.yaml --output data/cram-prepared          # every core of this machine
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

The blocks are exactly those the streaming path makes (``BlockPacker``: documents joined by the layout's separator,
cut into blocks of ``max_seq_length``); the tokens left after the last full block of a split (fewer than one block)
are dropped and counted in the manifest. Preparing is deterministic whatever the number of processes (documents are
tokenized in parallel and packed in order), so preparing twice gives byte-identical shards; an interrupted prepare
resumes after the last shard it wrote (the manifest holds the corpus position and the packer's carry-over).

Reading (``PreparedBlocks``, the streaming ``PackedBlocks``'s twin): the split's blocks are divided into one
contiguous range per (rank x DataLoader worker), so ranks read disjoint blocks and touch few shard files; each
range is read in chunks of ``CHUNK_BLOCKS`` blocks, memory-mapped (memory stays flat in corpus size), in a seeded
order reshuffled every epoch when ``data.shuffle_documents`` is set. The position (epoch, chunks read) is all a resume
needs: nothing is read again. A remote location (any fsspec URL: ``s3://``, ``gs://``, ``hf://datasets/...``) is
read through fsspec, each rank fetching only the shard files of its range into a local cache (``SSLNLP_CACHE``,
default ``~/.cache/sslnlp``), checked against the manifest's sha256.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from sslnlp.corpus import CorpusError, training_and_validation_corpora
from sslnlp.packing import BlockLayout, BlockPacker, packing_backend, word_starts_of

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "sslnlp-prepared-blocks"
VERSION = 1
CHUNK_BLOCKS = 64  # blocks per read (and per step of the shuffled order)
DEFAULT_SHARD_TOKENS = 2**24  # ~32 MB of uint16 tokens per shard file


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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**22), b""):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_sha256(tokenizer) -> str:
    """The same fingerprint a run's provenance records."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()


def _write_json(path: Path, value: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=1))
    os.replace(partial, path)


# ------------------------------------------------------------------------------------------------------- prepare


_worker_backend = None


def _start_worker(tokenizer_json: str) -> None:
    global _worker_backend
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per process: num_proc says how many cores
    from tokenizers import Tokenizer

    _worker_backend = Tokenizer.from_str(tokenizer_json)


def _tokenize(texts: list[str], with_word_starts: bool):
    """[ids int32 array per document], [word starts per document] or None (in a worker process)."""
    if with_word_starts:
        encodings = _worker_backend.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encodings], [word_starts_of(e) for e in encodings]
    encodings = _worker_backend.encode_batch_fast(texts, add_special_tokens=False)
    return [np.asarray(e.ids, dtype=np.int32) for e in encodings], None


def _schema(max_seq_length: int, token_type, with_word_starts: bool):
    import pyarrow as pa

    fields = [pa.field("input_ids", pa.list_(token_type, max_seq_length))]
    if with_word_starts:
        fields.append(pa.field("word_starts", pa.list_(pa.uint8(), max_seq_length)))
    return pa.schema(fields)


def _write_shard(path: Path, blocks: list[np.ndarray], starts: list[np.ndarray] | None, token_type,
                 max_seq_length: int) -> None:
    """One Arrow IPC stream file (datasets' format), written to a partial name and renamed into place."""
    import pyarrow as pa

    ids = np.concatenate(blocks).astype(token_type.to_pandas_dtype(), copy=False)
    columns = [pa.FixedSizeListArray.from_arrays(pa.array(ids.reshape(-1), type=token_type), max_seq_length)]
    if starts is not None:
        flat = np.concatenate(starts).astype(np.uint8).reshape(-1)
        columns.append(pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.uint8()), max_seq_length))
    schema = _schema(max_seq_length, token_type, starts is not None)
    table = pa.Table.from_arrays(columns, schema=schema)
    partial = path.with_name(path.name + ".partial")
    with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        writer.write_table(table, max_chunksize=8192)
    os.replace(partial, path)


def _prepare_tokenizer(config, objective, train_corpus, output: Path):
    """The configured tokenizer, the one an earlier (interrupted) prepare trained into ``output``, or a new one."""
    from sslnlp.tokenizer import load_tokenizer, train_tokenizer_into

    options, saved, partial = config.tokenizer, output / "tokenizer", output / "tokenizer.partial"
    shutil.rmtree(partial, ignore_errors=True)
    given = options.tokenizer_name_or_path or config.model.model_name_or_path
    if given:  # kept beside the blocks too, so that a run (or a user) finds the tokenizer they were made with
        tokenizer = load_tokenizer(given, trust_remote_code=config.model.trust_remote_code)
        if not (saved / "tokenizer.json").is_file():
            tokenizer.save_pretrained(partial)
            os.replace(partial, saved)
        return tokenizer
    if not (saved / "tokenizer.json").is_file():
        train_tokenizer_into(train_corpus, saved, options, encoder=objective.encoder)
    return load_tokenizer(str(saved))


def prepare(config, output: str | os.PathLike, *, num_proc: int | None = None,
            shard_tokens: int = DEFAULT_SHARD_TOKENS) -> dict:
    """Tokenize and pack a pretraining config's corpus once into Arrow shards; return the manifest.

    Reads what ``pretrain(config)`` would read: ``data.train_files`` (with ``data.validation_holdout_every`` or
    ``data.validation_files`` as the validation split, ``data.shuffle_documents``, mixtures), with the config's
    tokenizer (trained as pretrain would when none is given), objective (its block layout: special tokens, word
    starts) and ``data.max_seq_length``. Train from the result with ``data.train_files=OUTPUT``.

    Args:
        config: a PretrainConfig (the recipe the shards are for).
        output: the directory to write; an interrupted prepare of the same settings there resumes, a finished one
            returns at once, anything else there is refused.
        num_proc: tokenizer processes (default: every core); the shards do not depend on it.
        shard_tokens: tokens per shard file (rounded down to whole blocks; a shard closes at the first document
            batch that fills it).
    """
    from sslnlp.objectives import build_objective

    data = config.data
    output = Path(os.path.expanduser(os.fspath(output)))
    if output.exists() and any(output.iterdir()) and not (output / MANIFEST).is_file():
        raise CorpusError(f"{output} exists and is not a prepared directory (no {MANIFEST}); give an empty or new "
                          "--output")
    output.mkdir(parents=True, exist_ok=True)
    objective = build_objective(config.objective, config.model)
    train_corpus, validation_corpus = training_and_validation_corpora(data)
    if not train_corpus.reiterable and validation_corpus is not None:
        raise CorpusError("data.train_files is a one-shot generator, read once; prepare reads it for the training "
                          "and the validation split: pass a list, files or a function returning a new generator")
    tokenizer = _prepare_tokenizer(config, objective, train_corpus, output)
    layout = objective.block_layout(tokenizer)
    if layout.segment_tokens:
        raise CorpusError(f"objective.name={config.objective.name} reads unpacked segments, not packed blocks; "
                          "train it from text (prepared shards hold packed blocks)")
    vocabulary = len(tokenizer)
    settings = {
        "format": FORMAT, "version": VERSION, "tokenizer_sha256": tokenizer_sha256(tokenizer),
        "max_seq_length": data.max_seq_length,
        "layout": {"prefix": list(layout.prefix), "suffix": list(layout.suffix), "separator": layout.separator,
                   "word_starts": layout.word_starts},
        "dtype": "uint16" if vocabulary <= 2**16 else "int32",
        "blocks_per_shard": max(1, shard_tokens // data.max_seq_length),
        "documents_per_batch": data.documents_per_batch,
        "data": {key: _plain(getattr(data, key)) for key in
                 ("train_files", "validation_files", "validation_holdout_every", "mixture_weights",
                  "dataset_config_name", "dataset_split", "text_field", "document_separator", "on_bad_record",
                  "max_document_bytes", "shuffle_documents", "seed")},
        "data_fingerprint": train_corpus.fingerprint(),
    }
    manifest_path = output / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    if manifest is not None and manifest["settings"] != json.loads(json.dumps(settings, default=str)):
        changed = sorted(k for k in settings if json.loads(json.dumps(settings[k], default=str))
                         != manifest["settings"].get(k))
        raise CorpusError(f"{output} holds blocks prepared with other settings ({', '.join(changed)} differ); "
                          "give a new --output, or delete it to prepare again")
    if manifest is not None and manifest.get("complete"):
        logger.info("%s is already prepared (%d training blocks)", output, manifest["splits"]["train"]["blocks"])
        return manifest
    if manifest is None:
        manifest = {"settings": json.loads(json.dumps(settings, default=str)), "complete": False, "splits": {}}
        _write_json(manifest_path, manifest)
    else:
        logger.info("resuming the interrupted prepare of %s", output)
    splits = {"train": train_corpus} | ({"validation": validation_corpus} if validation_corpus is not None else {})
    num_proc = num_proc or os.cpu_count() or 1
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with context.Pool(num_proc, initializer=_start_worker, initargs=(packing_backend(tokenizer).to_str(),)) as pool:
        for name, corpus in splits.items():
            _prepare_split(pool, num_proc, corpus, output, name, manifest, layout, data.max_seq_length)
    manifest["complete"] = True
    _write_json(manifest_path, manifest)
    return manifest


def _plain(value):
    return [os.fspath(v) if isinstance(v, os.PathLike) else v for v in value] if isinstance(value, (list, tuple)) \
        else (os.fspath(value) if isinstance(value, os.PathLike) else value)


def _prepare_split(pool, num_proc: int, corpus, output: Path, name: str, manifest: dict, layout: BlockLayout,
                   max_seq_length: int) -> None:
    import pyarrow as pa

    settings = manifest["settings"]
    split = manifest["splits"].setdefault(name, {"shards": [], "blocks": 0, "tokens": 0, "documents": 0,
                                                 "state": {"position": None, "packer": None}})
    folder = output / name
    folder.mkdir(exist_ok=True)
    written = {shard["file"] for shard in split["shards"]}
    for leftover in folder.iterdir():  # an interrupted shard (partial, or renamed before the manifest said so)
        if leftover.name not in written:
            leftover.unlink()
    if split["state"] is None:
        return  # this split was finished before the interruption
    token_type = pa.uint16() if settings["dtype"] == "uint16" else pa.int32()
    packer = BlockPacker(max_seq_length, layout.prefix, layout.suffix, layout.separator, layout.word_starts)
    position = split["state"]["position"]
    if split["state"]["packer"]:
        packer.load_state(split["state"]["packer"])
    elif position is None:
        position = corpus.epoch_start(0)
    documents = corpus.iter_documents(position, 0, 1)
    batches = iter(lambda: list(itertools.islice(documents, settings["documents_per_batch"])), [])
    pending = collections.deque()  # (async result, position after the batch, documents in it): bounded read-ahead
    blocks, starts = [], [] if layout.word_starts else None
    buffered, batch_documents = 0, 0

    def close_shard(state: dict | None) -> None:
        nonlocal blocks, starts, buffered, batch_documents
        if buffered:
            file = f"shard-{len(split['shards']):05d}.arrow"
            _write_shard(folder / file, blocks, starts, token_type, max_seq_length)
            split["shards"].append({"file": file, "blocks": buffered, "sha256": sha256_file(folder / file)})
            split["blocks"] += buffered
            split["tokens"] += buffered * max_seq_length
        split["documents"] += batch_documents
        split["state"] = state
        _write_json(output / MANIFEST, manifest)
        blocks, starts = [], [] if layout.word_starts else None
        buffered, batch_documents = 0, 0

    while True:
        while len(pending) < 2 * num_proc:
            batch = next(batches, None)
            if batch is None:
                break
            texts = [text for text, _ in batch]
            pending.append((pool.apply_async(_tokenize, (texts, layout.word_starts)), batch[-1][1], len(batch)))
        if not pending:
            break
        result, position, count = pending.popleft()
        ids, word_starts = result.get()
        new_blocks, new_starts = packer.add(ids, word_starts)
        batch_documents += count
        if len(new_blocks):
            blocks.append(new_blocks)
            if starts is not None:
                starts.append(new_starts)
            buffered += len(new_blocks)
        if buffered >= settings["blocks_per_shard"]:
            close_shard({"position": position, "packer": packer.state()})
    split["tail_tokens_dropped"] = int(len(packer.carry_ids))
    close_shard(None)
    if split["blocks"] == 0:
        raise CorpusError(f"the {name} split has fewer tokens than one block of data.max_seq_length="
                          f"{max_seq_length}: nothing to prepare")
    logger.info("%s: %d documents -> %d blocks of %d tokens in %d shards", name, split["documents"], split["blocks"],
                max_seq_length, len(split["shards"]))


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
        partial = local.with_name(f"{local.name}.{os.getpid()}.partial")
        filesystem.get_file(f"{root}/{relative}", str(partial))
        if sha256 is not None and sha256_file(partial) != sha256:
            partial.unlink()
            raise CorpusError(f"{self.location}/{relative} does not match the manifest's sha256 (changed after "
                              "prepare, or a broken download); prepare again or retry")
        os.replace(partial, local)
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
        if layout.segment_tokens:
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

    def __getstate__(self):  # DataLoader workers map the files themselves
        return {**self.__dict__, "_tables": {}}

    def fingerprint(self) -> dict:
        return {**self.data.fingerprint(), "split": self.name}

    def _table(self, index: int):
        if index not in self._tables:
            import pyarrow as pa

            shard = self.shards[index]
            path = self.data.fetch(f"{self.name}/{shard['file']}", shard["sha256"])
            self._tables[index] = pa.ipc.open_stream(pa.memory_map(str(path))).read_all()
        return self._tables[index]

    def read(self, start: int, stop: int, with_word_starts: bool) -> dict:
        """Blocks [start, stop): {"input_ids": int32 [n, L], "word_starts": bool [n, L] (when asked)}."""
        pieces = collections.defaultdict(list)
        shard = int(np.searchsorted(self.ends, start, side="right"))
        while start < stop:
            first = int(self.ends[shard - 1]) if shard else 0
            take = min(stop, int(self.ends[shard])) - start
            table = self._table(shard).slice(start - first, take)
            columns = ["input_ids"] + (["word_starts"] if with_word_starts else [])
            for column in columns:
                values = table.column(column).combine_chunks()
                length = values.type.list_size
                pieces[column].append(values.values.to_numpy().reshape(-1, length))
            start += take
            shard += 1
        chunk = {"input_ids": np.concatenate(pieces["input_ids"]).astype(np.int32)}
        if with_word_starts:
            chunk["word_starts"] = np.concatenate(pieces["word_starts"]).astype(bool)
        return chunk


class PreparedBlocks(torch.utils.data.IterableDataset):
    """Chunks of prepared blocks for this rank, with the interface of ``PackedBlocks`` (``BlockStream`` reads either).

    Args:
        split: the PreparedSplit to read.
        layout: the run's BlockLayout (word starts are read only when it wants them).
        rank, world_size, num_workers: as for PackedBlocks: one contiguous range of blocks per rank x worker.
        shuffle: visit the range's chunks in a seeded order, reshuffled every epoch (else stored order).
        seed: that order's seed.
        repeat: start a new epoch at the end of the range (training); False reads it once (evaluation).
    """

    def __init__(self, split: PreparedSplit, *, layout: BlockLayout, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, shuffle: bool = False, seed: int = 0, repeat: bool = True):
        super().__init__()
        self.split, self.layout = split, layout
        self.rank, self.world_size = rank, world_size
        self.workers_per_rank = max(1, num_workers)
        self.shuffle, self.seed, self.repeat = shuffle, seed, repeat
        self.shard_states: dict[int, dict] = {}
        self.worker_rotation = 0
        if split.blocks < self.shard_count:
            raise CorpusError(f"{split.data.location} has {split.blocks} {split.name} blocks, fewer than the "
                              f"{self.shard_count} readers (ranks x data.num_workers); prepare more text or use fewer")

    @property
    def shard_count(self) -> int:
        return self.world_size * self.workers_per_rank

    def shards_of_rank(self) -> list[int]:
        return [self.rank * self.workers_per_rank + slot for slot in range(self.workers_per_rank)]

    def block_range(self, shard: int) -> tuple[int, int]:
        """The blocks [start, stop) of one reader: contiguous, disjoint, sizes differing by at most one."""
        return shard * self.split.blocks // self.shard_count, (shard + 1) * self.split.blocks // self.shard_count

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        shard = self.rank * self.workers_per_rank + (worker + self.worker_rotation) % self.workers_per_rank
        return self.iter_shard(shard, self.shard_states.get(shard))

    def chunk_order(self, shard: int, epoch: int) -> np.ndarray:
        start, stop = self.block_range(shard)
        count = -(-(stop - start) // CHUNK_BLOCKS)
        if not self.shuffle:
            return np.arange(count)
        return np.random.default_rng([self.seed, epoch, shard]).permutation(count)

    def iter_shard(self, shard: int, state: dict | None = None) -> Iterator[dict]:
        start, stop = self.block_range(shard)
        epoch, position = (state["epoch"], state["position"]) if state else (0, 0)
        while True:
            order = self.chunk_order(shard, epoch)
            for index in range(position, len(order)):
                first = start + int(order[index]) * CHUNK_BLOCKS
                chunk = self.split.read(first, min(first + CHUNK_BLOCKS, stop), self.layout.word_starts)
                chunk["shard"] = shard
                chunk["state"] = {"epoch": epoch, "position": index + 1}
                yield chunk
            if not self.repeat:
                return
            epoch, position = epoch + 1, 0
