"""Where a run's blocks come from: text corpora (packed or cut into segments as they stream) or a prepared
directory. The one place that knows the kinds of block source; the training loop asks it and tests no type.
"""

from __future__ import annotations

import dataclasses

from sslnlp.data.blocks import BlockSource
from sslnlp.data.corpus import CorpusError, build_corpus, training_and_validation_corpora
from sslnlp.data.packing import BlockLayout, PackedBlocks
from sslnlp.data.prepared import CHUNK_BLOCKS, PreparedBlocks, PreparedData, PreparedSplit, check_not_half_prepared, is_prepared
from sslnlp.data.segments import SegmentBlocks, SegmentLayout


def open_training_data(data):
    """(training source, validation source or None) of a DataConfig: corpora of text, or the splits of a prepared
    directory (``sslnlp prepare``; its validation split unless data.validation_files names text)."""
    if not is_prepared(data.train_files):
        check_not_half_prepared(data.train_files)
        return training_and_validation_corpora(data)
    if data.replay_files:
        raise CorpusError("data.replay_files does not apply to a prepared directory (its mixture was fixed by sslnlp "
                          "prepare); prepare the domain and the replayed text together with mixture weights")
    if data.mixture_weights:
        raise CorpusError("data.mixture_weights does not apply to a prepared directory (its mixture was fixed by "
                          "sslnlp prepare); leave it empty")
    prepared = PreparedData(data.train_files)
    if data.validation_files:
        return prepared.split("train"), build_corpus(dataclasses.replace(data, mixture_weights=[],
                                                                          shuffle_documents=False),
                                                     data.validation_files, "validation")
    return prepared.split("train"), prepared.split("validation")


def bundled_tokenizer(source) -> str | None:
    """The tokenizer a source was made with (a prepared split's), or None for text."""
    return str(source.data.tokenizer_path()) if isinstance(source, PreparedSplit) else None


def block_source(source, data, layout, tokenizer, *, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 batch_size: int = CHUNK_BLOCKS, repeat: bool = True) -> BlockSource:
    """The blocks of ``source`` for one rank, in the objective's ``layout``.

    Args:
        source: a Corpus or a PreparedSplit (``open_training_data``).
        data: the run's DataConfig (max_seq_length, documents_per_batch, shuffle_documents, seed).
        layout: a BlockLayout (packed blocks) or a SegmentLayout (segments, from text only).
        tokenizer: the run's tokenizer (a prepared split checks it made the blocks).
        rank, world_size, num_workers: this process's place; a shard per (rank x worker).
        batch_size: blocks this rank takes per micro-batch (prepared blocks are read a micro-batch at a time).
        repeat: epochs without end (training) or one pass (evaluation).
    """
    if isinstance(source, PreparedSplit):
        source.data.check(tokenizer, layout, data.max_seq_length)
        return PreparedBlocks(source, layout=layout, rank=rank, world_size=world_size, num_workers=num_workers,
                              batch_size=batch_size, shuffle=data.shuffle_documents and repeat,
                              window=data.shuffle_buffer_size if repeat else 0, seed=data.seed, repeat=repeat)
    kind = {BlockLayout: PackedBlocks, SegmentLayout: SegmentBlocks}[type(layout)]
    return kind(source, tokenizer, data.max_seq_length, layout=layout, rank=rank, world_size=world_size,
                num_workers=num_workers, documents_per_batch=data.documents_per_batch, repeat=repeat)
