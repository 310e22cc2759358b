"""Text sources -> a resumable, shardable stream of documents (strings).

    from sslnlp import load_corpus
    corpus = load_corpus("data/*.jsonl.gz")                 # files, globs, directories; .gz .bz2 .xz .zst
    corpus = load_corpus(["first document", "second one"])  # any list / generator of strings
    corpus = load_corpus({"a.jsonl": 0.7, "b.txt": 0.3}, seed=0)   # weighted mixture
    corpus = load_corpus("sorted.jsonl.xz", shuffle_documents=True) # held in memory, a new order each epoch
    for text, position in corpus.iter_documents(): ...

Every corpus yields ``(text, position)`` pairs; ``position`` is a small dict that, passed back as ``start=``, resumes the
stream right after that document. File corpora resume by seeking to a byte offset (no parsing of what was consumed);
in-memory datasets resume by index; plain Python iterables and streaming Hub datasets resume by skipping records
(cheap: no tokenization), which is the only way to resume a stream that cannot seek.

Sharding is by record: shard ``i`` of ``n`` keeps records ``i, i + n, i + 2n, ...`` and skips the others before parsing
them, so ranks and DataLoader workers see disjoint shards that together are the whole corpus.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import glob
import gzip
import io
import json
import logging
import lzma
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
KNOWN_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + (".csv", ".tsv", ".parquet")
DOCUMENT_SEPARATORS = ("line", "blank_line")
BAD_RECORD_POLICIES = ("error", "skip")


class CorpusError(ValueError):
    """A user-facing problem with a corpus: the message is one line naming the file/line and what to do."""


def _mix64(value: int) -> int:
    """splitmix64: a counter-based hash, so a mixture's choice for record r needs no RNG state to resume."""
    value = (value + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return value ^ (value >> 31)


class Corpus:
    """A re-iterable stream of documents. Subclasses implement ``iter_documents``."""

    name = "corpus"
    #: True when a second pass over the data is possible (multi-epoch training).
    reiterable = True

    def iter_documents(
        self, start: dict | None = None, shard_index: int = 0, shard_count: int = 1
    ) -> Iterator[tuple[str, dict]]:
        """Yield ``(text, position_after)`` for the records of one shard, starting after ``start``.

        Args:
            start: a position yielded earlier by this corpus (resume right after it); None starts at the beginning.
            shard_index: which shard to yield, in ``[0, shard_count)``.
            shard_count: number of disjoint shards the corpus is split into (ranks x DataLoader workers).
        """
        raise NotImplementedError

    def epoch_start(self, epoch: int) -> dict | None:
        """The ``start`` of epoch ``epoch`` (0, 1, ...): None (the beginning) unless the order changes per epoch."""
        return None

    def records_before(self, position: dict | None) -> int:
        """How many records of its epoch come before ``position`` (one this corpus yielded; None: the start). Record
        ``i`` belongs to shard ``i mod shard_count``, so this places every shard's position on one line."""
        if not position:
            return 0
        return int(position["record"] if "record" in position else position["index"])

    def fingerprint(self) -> dict:
        """What identifies the text this corpus reads (JSON-able): recorded by a run and compared on resume."""
        return {"kind": type(self).__name__, "name": self.name}

    def __iter__(self) -> Iterator[str]:
        for text, _ in self.iter_documents():
            yield text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


# ----------------------------------------------------------------------------------------------------------- files


def open_binary(path: Path):
    """Open a (possibly compressed) file for buffered binary reading; the suffix decides the codec."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")
    if suffix == ".bz2":
        return bz2.open(path, "rb")
    if suffix == ".xz":
        return lzma.open(path, "rb")
    if suffix == ".zst":
        try:
            import zstandard
        except ImportError as error:
            raise CorpusError(f"{path}: reading .zst needs the zstandard package: pip install zstandard") from error
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def _file_format(path: Path, declared: str | None) -> str:
    if declared:
        return declared
    name = path.name.lower()
    for suffix in COMPRESSED_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    for fmt, suffixes in (("jsonl", JSONL_SUFFIXES), ("csv", (".csv",)), ("tsv", (".tsv",)), ("parquet", (".parquet",))):
        if name.endswith(suffixes):
            return fmt
    return "text"


def expand_paths(patterns: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand paths, globs (``**`` allowed) and directories (recursively, known suffixes) into a sorted file list."""
    files: list[Path] = []
    for pattern in patterns:
        pattern = os.path.expanduser(str(pattern))
        if glob.has_magic(pattern):
            matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not matches:
                raise CorpusError(f"glob {pattern!r} matched no files; check the pattern and the working directory")
            files.extend(matches)
        elif os.path.isdir(pattern):
            matches = sorted(
                p for p in Path(pattern).rglob("*")
                if p.is_file() and _strip_compression(p.name.lower()).endswith(KNOWN_SUFFIXES)
            )
            if not matches:
                raise CorpusError(f"directory {pattern!r} holds no corpus files ({', '.join(KNOWN_SUFFIXES)}, optionally compressed)")
            files.extend(matches)
        elif os.path.isfile(pattern):
            files.append(Path(pattern))
        else:
            raise CorpusError(f"corpus file {pattern!r} does not exist; check the path (globs like 'data/*.jsonl.gz' work too)")
    return files


def _strip_compression(name: str) -> str:
    for suffix in COMPRESSED_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


class FileCorpus(Corpus):
    """Documents from text / JSON Lines / CSV / Parquet files, optionally compressed, read one record at a time.

    Args:
        paths: files, globs or directories.
        text_field: the JSON key / CSV column / Parquet column holding the text.
        document_separator: for plain text: 'line' (one document per line) or 'blank_line' (paragraph blocks).
        on_bad_record: 'error' stops with a one-line message naming file and line; 'skip' skips and counts it.
        max_document_bytes: a record longer than this is an error (a binary or unsplit file), or skipped.
        file_format: force 'text', 'jsonl', 'csv', 'tsv' or 'parquet' instead of guessing from the suffix.
    """

    def __init__(
        self,
        paths: Iterable[str | os.PathLike],
        *,
        text_field: str = "text",
        document_separator: str = "line",
        on_bad_record: str = "error",
        max_document_bytes: int = 16 * 2**20,
        file_format: str | None = None,
    ):
        if document_separator not in DOCUMENT_SEPARATORS:
            raise CorpusError(f"document_separator={document_separator!r}; choose one of {DOCUMENT_SEPARATORS}")
        if on_bad_record not in BAD_RECORD_POLICIES:
            raise CorpusError(f"on_bad_record={on_bad_record!r}; choose one of {BAD_RECORD_POLICIES}")
        self.paths = expand_paths(paths)
        self.text_field = text_field
        self.document_separator = document_separator
        self.on_bad_record = on_bad_record
        self.max_document_bytes = max_document_bytes
        self.file_format = file_format
        self.skipped_records = 0
        self.name = str(self.paths[0]) + (f" (+{len(self.paths) - 1} files)" if len(self.paths) > 1 else "")

    def fingerprint(self) -> dict:
        files = []
        for path in self.paths:
            try:
                stat = path.stat()
                files.append([str(path), stat.st_size, stat.st_mtime_ns])
            except OSError:
                files.append([str(path), None, None])
        return {"kind": "files", "files": files}

    def _bad(self, path: Path, line: int, problem: str, fix: str) -> None:
        if self.on_bad_record == "error":
            raise CorpusError(f"{path}:{line}: {problem}; {fix} (or set on_bad_record=skip to skip such records)")
        self.skipped_records += 1
        if self.skipped_records in (1, 10, 100, 1000) or self.skipped_records % 10000 == 0:
            logger.warning("skipped %d bad records so far; latest %s:%d: %s", self.skipped_records, path, line, problem)

    def iter_documents(self, start=None, shard_index=0, shard_count=1):
        start = start or {}
        record = start.get("record", 0)
        first_file = start.get("file", 0)
        for file_index in range(first_file, len(self.paths)):
            resume = start if file_index == first_file and "offset" in start else None
            path = self.paths[file_index]
            fmt = _file_format(path, self.file_format)
            if fmt == "parquet":
                reader = self._parquet_records(path, resume)
            elif fmt in ("csv", "tsv"):
                reader = self._csv_records(path, resume, delimiter="," if fmt == "csv" else "\t")
            else:
                reader = self._line_records(path, resume, fmt)
            for raw, offset, line in reader:
                keep = record % shard_count == shard_index
                record += 1
                if not keep:
                    continue
                text = self._decode(raw, fmt, path, line)
                if text is not None:
                    yield text, {"file": file_index, "offset": offset, "line": line, "record": record}

    def _decode(self, raw, fmt: str, path: Path, line: int) -> str | None:
        """Turn a raw record (bytes for text/jsonl, str for csv/parquet) into its text, or None when skipped."""
        if isinstance(raw, str):
            return raw
        if b"\x00" in raw:
            return self._bad(path, line, "contains NUL bytes: this looks like a binary file, not text", "remove it from the corpus")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            return self._bad(path, line, f"invalid UTF-8 ({error.reason} at byte {error.start})", "re-encode the file as UTF-8")
        if fmt != "jsonl":
            return text
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as error:
            return self._bad(path, line, f"malformed JSON ({error.msg}, column {error.colno})", "fix or remove that line")
        if not isinstance(obj, dict) or self.text_field not in obj:
            keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            return self._bad(path, line, f"no {self.text_field!r} field (found {keys})", "set data.text_field to the key that holds the text")
        value = obj[self.text_field]
        if not isinstance(value, str):
            return self._bad(path, line, f"field {self.text_field!r} is {type(value).__name__}, not a string", "fix the record")
        return value if value.strip() else None

    def _line_records(self, path: Path, resume: dict | None, fmt: str):
        """Yield (raw bytes, offset after the record, line number) for one line-oriented file."""
        limit = self.max_document_bytes
        blank_mode = fmt == "text" and self.document_separator == "blank_line"
        try:
            with open_binary(path) as handle:
                line_number = 0
                if resume:
                    handle.seek(resume["offset"])
                    line_number = resume["line"]
                paragraph: list[bytes] = []
                paragraph_line = 0
                while True:
                    raw = handle.readline(limit + 1)
                    if not raw:
                        break
                    line_number += 1
                    if len(raw) > limit and not raw.endswith(b"\n"):
                        while raw and not raw.endswith(b"\n"):  # consume the rest of the enormous line in pieces
                            raw = handle.readline(limit + 1)
                        self._bad(path, line_number, f"record longer than max_document_bytes={limit}",
                                  "split the file into documents or raise data.max_document_bytes")
                        continue
                    if blank_mode:
                        if raw.strip():
                            if not paragraph:
                                paragraph_line = line_number
                            paragraph.append(raw)
                            continue
                        if paragraph:
                            yield b"".join(paragraph).strip(), handle.tell(), paragraph_line
                            paragraph = []
                        continue
                    raw = raw.strip()
                    if raw:
                        yield raw, handle.tell(), line_number
                if paragraph:
                    yield b"".join(paragraph).strip(), handle.tell(), paragraph_line
        except (EOFError, OSError, lzma.LZMAError) as error:
            if isinstance(error, FileNotFoundError):
                raise CorpusError(f"{path}: file disappeared while reading") from error
            raise CorpusError(f"{path}: cannot read past line {line_number}: the file is truncated or corrupt ({error}); "
                              "re-download or re-compress it") from error
        except Exception as error:  # zstandard raises its own error type
            if type(error).__name__ == "ZstdError":
                raise CorpusError(f"{path}: cannot read past line {line_number}: the file is truncated or corrupt ({error})") from error
            raise

    def _csv_records(self, path: Path, resume: dict | None, delimiter: str):
        skip = resume["line"] if resume else 0
        with open_binary(path) as handle:
            text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
            try:
                reader = csv.DictReader(text, delimiter=delimiter)
                if reader.fieldnames is None or self.text_field not in reader.fieldnames:
                    raise CorpusError(f"{path}: no column {self.text_field!r} (columns: {reader.fieldnames}); set data.text_field")
                for row_number, row in enumerate(reader, start=1):
                    if row_number <= skip:
                        continue
                    value = row.get(self.text_field) or ""
                    if value.strip():
                        yield value, 0, row_number
            except UnicodeDecodeError as error:
                raise CorpusError(f"{path}: invalid UTF-8 near row {reader.line_num}; re-encode the file as UTF-8") from error
            except csv.Error as error:
                raise CorpusError(f"{path}:{reader.line_num}: malformed CSV ({error})") from error

    def _parquet_records(self, path: Path, resume: dict | None):
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
        except Exception as error:
            raise CorpusError(f"{path}: not a readable Parquet file ({error})") from error
        if self.text_field not in parquet.schema_arrow.names:
            raise CorpusError(f"{path}: no column {self.text_field!r} (columns: {parquet.schema_arrow.names}); set data.text_field")
        skip = resume["line"] if resume else 0
        row_number = 0
        for group in range(parquet.num_row_groups):
            group_rows = parquet.metadata.row_group(group).num_rows
            if row_number + group_rows <= skip:  # whole row groups before the resume point are never read
                row_number += group_rows
                continue
            column = parquet.read_row_group(group, columns=[self.text_field]).column(0).to_pylist()
            for value in column:
                row_number += 1
                if row_number > skip and isinstance(value, str) and value.strip():
                    yield value, 0, row_number


# ----------------------------------------------------------------------------------------- in-memory and streaming


class IterableCorpus(Corpus):
    """Documents from a list, a generator, a function returning an iterable, or a ``datasets`` dataset.

    A one-shot generator can be read once; pass a list or a zero-argument function for multi-epoch training.
    """

    def __init__(self, source, *, text_field: str = "text", name: str | None = None):
        self.text_field = text_field
        self.source = source
        self._consumed = False
        self.reiterable = callable(source) or not isinstance(source, Iterator)
        self.name = name or type(source).__name__

    def fingerprint(self) -> dict:
        if isinstance(self.source, (list, tuple)) and all(isinstance(t, str) for t in self.source):
            import hashlib

            digest = hashlib.sha256()
            for text in self.source:
                digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
            return {"kind": "texts", "count": len(self.source), "sha256": digest.hexdigest()}
        return {"kind": type(self.source).__name__, "name": self.name}

    def _records(self, skip: int):
        import datasets

        source = self.source() if callable(self.source) else self.source
        if isinstance(source, datasets.Dataset):  # map-style: resume by index, nothing re-read
            for index in range(skip, len(source)):
                yield index, source[index][self.text_field]
            return
        if isinstance(source, Iterator) and not callable(self.source):  # a function gives a new generator each time
            if self._consumed:
                raise CorpusError(f"corpus {self.name}: a generator can be read only once; pass a list or a function "
                                  "returning a new generator to train for more than one epoch or to resume")
            self._consumed = True
        for index, item in enumerate(source):
            if index < skip:
                continue
            yield index, item[self.text_field] if isinstance(item, dict) else item

    def iter_documents(self, start=None, shard_index=0, shard_count=1):
        record = (start or {}).get("record", 0)
        for index, text in self._records(record):
            record = index + 1
            if index % shard_count != shard_index:
                continue
            if not isinstance(text, str):
                raise CorpusError(f"corpus {self.name}: record {index} is {type(text).__name__}, not a string")
            if text.strip():
                yield text, {"record": record}


class MixtureCorpus(Corpus):
    """A weighted mixture: record r comes from source i with probability weights[i], decided by a hash of
    (seed, r) so the mixture is reproducible by seed and resumes without RNG state. Sources that run out start over,
    so a mixture is endless: the training budget ends it."""

    def __init__(self, corpora: list[Corpus], weights: list[float], seed: int = 0):
        if len(corpora) != len(weights) or not corpora:
            raise CorpusError("a mixture needs one weight per source")
        self.reiterable = all(corpus.reiterable for corpus in corpora)  # a source that runs out starts over
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise CorpusError(f"mixture weights must be non-negative and not all zero, got {weights}")
        total = float(sum(weights))
        self.corpora = corpora
        self.cumulative = []
        running = 0.0
        for weight in weights:
            running += weight / total
            self.cumulative.append(running)
        self.seed = seed
        self.name = " + ".join(f"{w / total:.0%} {c.name}" for c, w in zip(corpora, weights))

    def fingerprint(self) -> dict:
        return {"kind": "mixture", "seed": self.seed, "cumulative_weights": list(self.cumulative),
                "sources": [corpus.fingerprint() for corpus in self.corpora]}

    def _choose(self, record: int) -> int:
        u = _mix64(self.seed * 0x100000001B3 + record) / 2.0**64
        for index, bound in enumerate(self.cumulative):
            if u < bound:
                return index
        return len(self.cumulative) - 1

    def iter_documents(self, start=None, shard_index=0, shard_count=1):
        start = start or {}
        record = start.get("record", 0)
        children = list(start.get("children") or [None] * len(self.corpora))
        streams: list = [None] * len(self.corpora)
        while True:
            source = self._choose(record)
            keep = record % shard_count == shard_index
            record += 1
            for attempt in range(2):
                if streams[source] is None:
                    streams[source] = self.corpora[source].iter_documents(children[source])
                item = next(streams[source], None)
                if item is not None:
                    break
                if attempt or not self.corpora[source].reiterable:
                    raise CorpusError(f"mixture source {self.corpora[source].name} yields no documents")
                streams[source], children[source] = None, None  # exhausted: start that source over
            text, children[source] = item
            if keep:
                yield text, {"record": record, "children": list(children)}


class ShuffledCorpus(Corpus):
    """A finite corpus read into memory once and visited in a seeded random order, reshuffled every epoch.

    Streaming readers see a file in its stored order, and the block shuffle buffer only mixes neighbouring text: a
    corpus sorted by source (all of one book, then all of a manual, ...) would train on one source at a time, and the
    first N documents (what the tokenizer is trained on) would be one source. This class gives the global shuffle of
    a map-style dataset at the price of the corpus's text in RAM, once per data-loading process.

    Args:
        corpus: a finite corpus (files, a list, a ``datasets.Dataset``; not a mixture, which is endless).
        seed: the order of epoch ``e`` is the permutation drawn from ``(seed, e)``.
        max_bytes: refuse corpora whose text is larger than this (UTF-8 bytes).

    Positions are ``{"epoch", "index"}``: resuming needs no RNG state, only the permutation recomputed from the seed.
    """

    def __init__(self, corpus: Corpus, seed: int = 0, max_bytes: int = 8 * 2**30):
        if isinstance(corpus, MixtureCorpus):
            raise CorpusError("shuffle_documents shuffles each source of a mixture, not the (endless) mixture itself; "
                              "build the mixture from shuffled sources")
        self.corpus, self.seed, self.max_bytes = corpus, seed, max_bytes
        self.reiterable = True
        self.name = f"shuffled {corpus.name}"
        self._documents: list[bytes] | None = None

    def fingerprint(self) -> dict:
        return {"kind": "shuffled", "seed": self.seed, "source": self.corpus.fingerprint()}

    def documents(self) -> list[bytes]:
        """The corpus's documents in stored order (UTF-8), read on first use."""
        if self._documents is None:
            documents, size = [], 0
            for text, _ in self.corpus.iter_documents():
                encoded = text.encode("utf-8")
                size += len(encoded)
                if size > self.max_bytes:
                    raise CorpusError(f"corpus {self.corpus.name}: more than {self.max_bytes / 2**30:.1f} GiB of text, "
                                      "too large to shuffle in memory; shuffle its documents on disk once and set "
                                      "data.shuffle_documents=false")
                documents.append(encoded)
            if not documents:
                raise CorpusError(f"corpus {self.corpus.name} has no documents")
            logger.info("shuffling %d documents (%.1f MB of text) of %s in memory", len(documents), size / 1e6,
                        self.corpus.name)
            self._documents = documents
        return self._documents

    def order(self, epoch: int):
        import numpy as np

        return np.random.default_rng([self.seed, epoch]).permutation(len(self.documents()))

    def epoch_start(self, epoch: int) -> dict:
        return {"epoch": epoch, "index": 0}

    def iter_documents(self, start=None, shard_index=0, shard_count=1):
        start = start or {}
        epoch, index = start.get("epoch", 0), start.get("index", 0)
        documents, order = self.documents(), self.order(epoch)
        for position in range(index, len(order)):
            if position % shard_count == shard_index:
                yield documents[order[position]].decode("utf-8"), {"epoch": epoch, "index": position + 1}


class HoldoutCorpus(Corpus):
    """Split a corpus into training and held-out documents: every ``every``-th document is held out.

    Args:
        corpus: the corpus to split.
        every: hold out documents ``every - 1, 2 * every - 1, ...`` of the stream.
        held_out: True yields the held-out part, False the rest.
    """

    def __init__(self, corpus: Corpus, every: int, held_out: bool):
        if every < 2:
            raise CorpusError(f"validation_holdout_every={every} must be at least 2")
        self.corpus, self.every, self.held_out = corpus, every, held_out
        self.reiterable = corpus.reiterable
        self.name = f"{'held-out' if held_out else 'training'} part (1 in {every}) of {corpus.name}"

    def fingerprint(self) -> dict:
        return {"kind": "held out" if self.held_out else "held-out remainder", "every": self.every,
                "source": self.corpus.fingerprint()}

    def iter_documents(self, start=None, shard_index=0, shard_count=1):
        start = start or {}
        record, seen = start.get("record", 0), start.get("seen", 0)
        for text, inner in self.corpus.iter_documents(start.get("inner")):
            is_held_out = seen % self.every == self.every - 1
            seen += 1
            if is_held_out != self.held_out:
                continue
            keep = record % shard_count == shard_index
            record += 1
            if keep:
                yield text, {"inner": inner, "seen": seen, "record": record}


class PythonDocsCorpus(Corpus):
    """Docstrings of Python's own standard library (module, class and function docstrings of at least
    ``min_chars`` characters), read from the installed sources with ``ast``: real English text that every Python
    installation has, offline. The default corpus of the quick start (``sslnlp:python-docs``)."""

    name = "sslnlp:python-docs"

    def __init__(self, min_chars: int = 200):
        import sysconfig

        root = Path(sysconfig.get_paths()["stdlib"])
        skip = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "turtledemo", "__pycache__"}
        self.paths = sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts))
        self.min_chars = min_chars

    def _docstrings(self, path: Path) -> list[str]:
        import ast

        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):
            return []
        nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        texts = (ast.get_docstring(node) for node in nodes)
        return [text for text in texts if text and len(text) >= self.min_chars]

    def iter_documents(self, start=None, shard_index=0, shard_count=1):
        start = start or {}
        record, first_file, first_item = start.get("record", 0), start.get("file", 0), start.get("item", 0)
        for file_index in range(first_file, len(self.paths)):
            texts = self._docstrings(self.paths[file_index])
            for item in range(first_item if file_index == first_file else 0, len(texts)):
                keep = record % shard_count == shard_index
                record += 1
                if keep:
                    yield texts[item], {"file": file_index, "item": item + 1, "record": record}


# --------------------------------------------------------------------------------------------------------- factory


def _looks_like_paths(items: list) -> bool:
    sample = items[:16]
    return bool(sample) and all(
        isinstance(s, os.PathLike) or (isinstance(s, str) and not any(c.isspace() for c in s)
                                       and (_strip_compression(s.lower()).endswith(KNOWN_SUFFIXES) or glob.has_magic(s)))
        for s in sample
    )


def load_corpus(
    source,
    *,
    text_field: str = "text",
    document_separator: str = "line",
    on_bad_record: str = "error",
    max_document_bytes: int = 16 * 2**20,
    file_format: str | None = None,
    dataset_config_name: str | None = None,
    split: str = "train",
    seed: int = 0,
    shuffle_documents: bool = False,
) -> Corpus:
    """Turn any text source into a :class:`Corpus` (a stream of documents), without loading it into memory
    (unless ``shuffle_documents`` asks for the in-memory shuffle).

    Args:
        source: one of
            - a path, glob or directory (str or Path), or a list of them: text / JSONL / CSV / TSV / Parquet files,
              optionally ``.gz``/``.bz2``/``.xz``/``.zst`` compressed;
            - a directory written by ``datasets.Dataset.save_to_disk``;
            - a Hugging Face dataset name (``"wikitext"``, ``"owner/name"``), read in streaming mode;
            - a list, generator or zero-argument function of strings; a ``datasets.Dataset`` / ``IterableDataset``;
            - a dict ``{source: weight}`` or list of ``(source, weight)`` pairs: a weighted mixture;
            - a Corpus (returned as is).
        text_field: JSON key / column that holds the text.
        document_separator: plain text only: 'line' or 'blank_line'.
        on_bad_record: 'error' (default) or 'skip' malformed records, counting them in the log.
        max_document_bytes: longest record accepted from a file.
        file_format: force a file format instead of guessing it from the suffix.
        dataset_config_name, split: for Hub datasets.
        seed: mixture seed, and the document shuffle's.
        shuffle_documents: read the documents into memory and visit them in a seeded random order, reshuffled each
            epoch (:class:`ShuffledCorpus`; a mixture shuffles each of its sources). For corpora stored sorted.
    """
    options = dict(text_field=text_field, document_separator=document_separator, on_bad_record=on_bad_record,
                   max_document_bytes=max_document_bytes, file_format=file_format,
                   dataset_config_name=dataset_config_name, split=split, seed=seed, shuffle_documents=shuffle_documents)
    if isinstance(source, dict) or (isinstance(source, (list, tuple)) and source
                                    and all(isinstance(s, (list, tuple)) and len(s) == 2 for s in source)):
        pairs = list(source.items()) if isinstance(source, dict) else [tuple(s) for s in source]
        return MixtureCorpus([load_corpus(s, **options) for s, _ in pairs], [float(w) for _, w in pairs], seed=seed)
    corpus = _single_corpus(source, **{k: v for k, v in options.items() if k != "shuffle_documents"})
    if shuffle_documents and not isinstance(corpus, (ShuffledCorpus, MixtureCorpus)):
        return ShuffledCorpus(corpus, seed=seed)
    return corpus


def _single_corpus(source, *, text_field, document_separator, on_bad_record, max_document_bytes, file_format,
                   dataset_config_name, split, seed) -> Corpus:
    """load_corpus for one source (not a mixture)."""
    if isinstance(source, Corpus):
        return source
    if source == PythonDocsCorpus.name:
        return PythonDocsCorpus()
    file_options = dict(text_field=text_field, document_separator=document_separator, on_bad_record=on_bad_record,
                        max_document_bytes=max_document_bytes, file_format=file_format)
    if isinstance(source, (str, os.PathLike)):
        path = os.path.expanduser(str(source))
        if os.path.isdir(path) and (os.path.exists(os.path.join(path, "dataset_info.json"))
                                    or os.path.exists(os.path.join(path, "state.json"))):
            import datasets

            loaded = datasets.load_from_disk(path)
            if isinstance(loaded, datasets.DatasetDict):
                loaded = loaded[split]
            return IterableCorpus(loaded, text_field=text_field, name=path)
        if os.path.exists(path) or glob.has_magic(path) or isinstance(source, os.PathLike) or "." in os.path.basename(path) \
                or path.startswith((".", "/", "~")):
            return FileCorpus([path], **file_options)
        return _hub_corpus(path, dataset_config_name, split, text_field)
    if isinstance(source, (list, tuple)) and _looks_like_paths(list(source)):
        return FileCorpus(source, **file_options)
    try:
        import datasets

        if isinstance(source, datasets.DatasetDict):
            source = source[split]
        if isinstance(source, datasets.IterableDatasetDict):
            source = source[split]
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass
    if isinstance(source, (Iterable, Callable)):
        return IterableCorpus(source, text_field=text_field)
    raise CorpusError(f"cannot read a corpus from {type(source).__name__}; pass paths, a dataset name, or an iterable of strings")


def _hub_corpus(name: str, config_name: str | None, split: str, text_field: str) -> Corpus:
    import datasets

    def stream():
        try:
            return datasets.load_dataset(name, config_name, split=split, streaming=True)
        except Exception as error:
            raise CorpusError(f"cannot load dataset {name!r} (config {config_name!r}, split {split!r}): "
                              f"{str(error).splitlines()[0] if str(error) else type(error).__name__}; "
                              "check the name, or give local files (no network?)") from error

    stream()  # fail now, not inside a DataLoader worker
    return IterableCorpus(stream, text_field=text_field, name=name)


def build_corpus(data, files, split: str):
    """The corpus for ``files`` (train_files or validation_files) with the data section's reading options."""
    options = dict(text_field=data.text_field, document_separator=data.document_separator,
                   on_bad_record=data.on_bad_record, max_document_bytes=data.max_document_bytes,
                   dataset_config_name=data.dataset_config_name, split=split, seed=data.seed,
                   shuffle_documents=data.shuffle_documents)
    if isinstance(files, list) and data.mixture_weights:
        return load_corpus(list(zip(files, data.mixture_weights)), **options)
    return load_corpus(files, **options)  # a list of file names or globs reads files; other lists are documents


def training_and_validation_corpora(data):
    """(training corpus, validation corpus or None) of a DataConfig: the hold-out, the shuffle, the mixture, the
    replay of general text (held out of neither: the held-out text is the domain's)."""
    if data.validation_holdout_every and not data.validation_files:  # hold out from the stored order, then shuffle
        stored = build_corpus(dataclasses.replace(data, shuffle_documents=False), data.train_files, data.dataset_split)
        train = HoldoutCorpus(stored, data.validation_holdout_every, held_out=False)
        validation = HoldoutCorpus(stored, data.validation_holdout_every, held_out=True)
        return with_replay(data, ShuffledCorpus(train, seed=data.seed) if data.shuffle_documents else train), validation
    train = build_corpus(data, data.train_files, data.dataset_split)
    validation = None
    if data.validation_files:  # never mixed nor shuffled: the weights and the shuffle belong to train_files
        validation = build_corpus(dataclasses.replace(data, mixture_weights=[], shuffle_documents=False),
                                  data.validation_files, "validation")
    return with_replay(data, train), validation


def with_replay(data, train: Corpus) -> Corpus:
    """``train`` mixed with data.replay_files at data.replay_share of the documents (a seeded MixtureCorpus), or
    ``train`` itself when nothing is replayed."""
    if not data.replay_files or not data.replay_share:
        return train
    replay = build_corpus(dataclasses.replace(data, mixture_weights=[]), data.replay_files, data.dataset_split)
    return MixtureCorpus([train, replay], [1 - data.replay_share, data.replay_share], seed=data.seed)
