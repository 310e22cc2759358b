"""``sslnlp prepare``: tokenize and pack a corpus once into Arrow shards, in parallel, resumable after a kill.

    sslnlp prepare recipes/cram-cpu.yaml --output-dir data/cram-prepared          # every core of this machine
    sslnlp pretrain recipes/cram-cpu.yaml data.train_files=data/cram-prepared

The blocks are exactly those the streaming path makes (``BlockPacker``: documents joined by the layout's separator,
cut into blocks of ``max_seq_length``); the tokens left after the last full block of a split (fewer than one block)
are dropped and counted in the manifest. Preparing is deterministic whatever the number of processes (documents are
tokenized in parallel and packed in order), so preparing twice gives byte-identical shards; an interrupted prepare
resumes after the last shard it wrote (the manifest holds the corpus position and the packer's carry-over). The
directory's layout and its reader: ``sslnlp.data.prepared``.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import multiprocessing
import os
from pathlib import Path

import numpy as np

from sslnlp.data.corpus import CorpusError, training_and_validation_corpora
from sslnlp.data.packing import BlockLayout, BlockPacker, packing_backend, word_starts_of
from sslnlp.data.prepared import FORMAT, MANIFEST, VERSION, sha256_file, tokenizer_sha256
from sslnlp.files import atomic_path, ensure_writable, write_json_atomic

logger = logging.getLogger(__name__)

DEFAULT_SHARD_TOKENS = 2**24  # ~32 MB of uint16 tokens per shard file


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
    """One Arrow IPC stream file (datasets' format), written whole or not at all."""
    import pyarrow as pa

    ids = np.concatenate(blocks).astype(token_type.to_pandas_dtype(), copy=False)
    columns = [pa.FixedSizeListArray.from_arrays(pa.array(ids.reshape(-1), type=token_type), max_seq_length)]
    if starts is not None:
        flat = np.concatenate(starts).astype(np.uint8).reshape(-1)
        columns.append(pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.uint8()), max_seq_length))
    schema = _schema(max_seq_length, token_type, starts is not None)
    table = pa.Table.from_arrays(columns, schema=schema)
    with atomic_path(path) as temporary, pa.OSFile(str(temporary), "wb") as sink, \
            pa.ipc.new_stream(sink, schema) as writer:
        writer.write_table(table, max_chunksize=8192)


def _prepare_tokenizer(config, encoder: bool, train_corpus, output: Path):
    """The configured tokenizer, the one an earlier (interrupted) prepare trained into ``output``, or a new one."""
    from sslnlp.data.tokenizer import load_tokenizer, train_tokenizer_into

    options, saved = config.tokenizer, output / "tokenizer"
    given = options.tokenizer_name_or_path or config.model.model_name_or_path
    if given:  # kept beside the blocks too, so that a run (or a user) finds the tokenizer they were made with
        tokenizer = load_tokenizer(given, trust_remote_code=config.model.trust_remote_code)
        if not (saved / "tokenizer.json").is_file():
            with atomic_path(saved, replace_directory=True) as temporary:
                tokenizer.save_pretrained(temporary)
        return tokenizer
    if not (saved / "tokenizer.json").is_file():
        train_tokenizer_into(train_corpus, saved, options, encoder=encoder)
    return load_tokenizer(str(saved))


def prepare_blocks(config, output: str | os.PathLike, *, objective, num_proc: int | None = None,
                   shard_tokens: int = DEFAULT_SHARD_TOKENS) -> dict:
    """Tokenize and pack a pretraining config's corpus once into Arrow shards; return the manifest.

    Reads what ``pretrain(config)`` would read: ``data.train_files`` (with ``data.validation_holdout_every`` or
    ``data.validation_files`` as the validation split, ``data.shuffle_documents``, mixtures), with the config's
    tokenizer (trained as pretrain would when none is given), objective (its block layout: special tokens, word
    starts) and ``data.max_seq_length``. Train from the result with ``data.train_files=OUTPUT``.

    ``sslnlp.prepare(config, output_dir)`` builds the config's objective and calls this.

    Args:
        config: a PretrainConfig (the recipe the shards are for).
        objective: the config's objective (what it asks of the data: ``encoder``, ``block_layout(tokenizer)``).
        output: the directory to write; an interrupted prepare of the same settings there resumes, a finished one
            returns at once, anything else there is refused.
        num_proc: tokenizer processes (default: every core); the shards do not depend on it.
        shard_tokens: tokens per shard file (rounded down to whole blocks; a shard closes at the first document
            batch that fills it).
    """
    data = config.data
    output = Path(os.path.expanduser(os.fspath(output)))
    if output.is_dir() and any(output.iterdir()) and not (output / MANIFEST).is_file():
        raise CorpusError(f"--output-dir {output} exists and is not a prepared directory (no {MANIFEST}); give an "
                          "empty or new directory")
    ensure_writable(output, key="--output-dir")
    train_corpus, validation_corpus = training_and_validation_corpora(data)
    if not train_corpus.reiterable and validation_corpus is not None:
        raise CorpusError("data.train_files is a one-shot generator, read once; prepare reads it for the training "
                          "and the validation split: pass a list, files or a function returning a new generator")
    tokenizer = _prepare_tokenizer(config, objective.encoder, train_corpus, output)
    layout = objective.block_layout(tokenizer)
    if not isinstance(layout, BlockLayout):
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
                          "give a new --output-dir, or delete it to prepare again")
    if manifest is not None and manifest.get("complete"):
        logger.info("%s is already prepared (%d training blocks)", output, manifest["splits"]["train"]["blocks"])
        return manifest
    if manifest is None:
        manifest = {"settings": json.loads(json.dumps(settings, default=str)), "complete": False, "splits": {}}
        write_json_atomic(manifest_path, manifest, indent=1)
    else:
        logger.info("resuming the interrupted prepare of %s", output)
    splits = {"train": train_corpus} | ({"validation": validation_corpus} if validation_corpus is not None else {})
    num_proc = num_proc or os.cpu_count() or 1
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with context.Pool(num_proc, initializer=_start_worker, initargs=(packing_backend(tokenizer).to_str(),)) as pool:
        for name, corpus in splits.items():
            _prepare_split(pool, num_proc, corpus, output, name, manifest, layout, data.max_seq_length)
    manifest["complete"] = True
    write_json_atomic(manifest_path, manifest, indent=1)
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
        write_json_atomic(output / MANIFEST, manifest, indent=1)
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
