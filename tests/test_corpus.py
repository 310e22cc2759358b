import bz2
import collections
import gzip
import json
import lzma

import pytest

from sslnlp.data.corpus import CorpusError, load_corpus


def write_jsonl(path, texts, field="text", opener=open):
    with opener(path, "wt", encoding="utf-8") as handle:
        for text in texts:
            handle.write(json.dumps({field: text, "id": 1}) + "\n")


@pytest.mark.parametrize("suffix,opener", [("", open), (".gz", gzip.open), (".bz2", bz2.open), (".xz", lzma.open)])
def test_compressed_jsonl_reads_transparently(tmp_path, documents, suffix, opener):
    path = tmp_path / f"corpus.jsonl{suffix}"
    write_jsonl(path, documents[:50], opener=opener)
    assert list(load_corpus(str(path))) == documents[:50]


def test_zstd_reads(tmp_path, documents):
    zstandard = pytest.importorskip("zstandard")
    path = tmp_path / "corpus.jsonl.zst"
    payload = "".join(json.dumps({"text": t}) + "\n" for t in documents[:20]).encode()
    path.write_bytes(zstandard.ZstdCompressor().compress(payload))
    assert list(load_corpus(path)) == documents[:20]


def test_text_lines_and_blank_line_paragraphs(tmp_path):
    (tmp_path / "lines.txt").write_text("first doc\n\nsecond doc\nthird doc\n")
    assert list(load_corpus(str(tmp_path / "lines.txt"))) == ["first doc", "second doc", "third doc"]
    (tmp_path / "paras.txt").write_text("para one\ncontinues\n\n\npara two\n")
    assert list(load_corpus(str(tmp_path / "paras.txt"), document_separator="blank_line")) == ["para one\ncontinues", "para two"]


def test_csv_parquet_globs_directories_and_lists(tmp_path, documents):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d").mkdir()
    write_jsonl(tmp_path / "d" / "a.jsonl", documents[:5], field="body")
    with open(tmp_path / "d" / "b.csv", "w") as handle:
        handle.write("body,label\n" + "".join(f'"{t}",1\n' for t in documents[5:10]))
    pq.write_table(pa.table({"body": documents[10:15]}), tmp_path / "d" / "c.parquet", row_group_size=2)
    expected = documents[:15]
    assert list(load_corpus(str(tmp_path / "d"), text_field="body")) == expected
    assert list(load_corpus(str(tmp_path / "d" / "*"), text_field="body")) == expected
    assert list(load_corpus([tmp_path / "d" / "a.jsonl", tmp_path / "d" / "c.parquet"], text_field="body")) == documents[:5] + documents[10:15]


def test_iterables_generators_and_datasets(documents):
    import datasets

    assert list(load_corpus(documents[:3])) == documents[:3]
    assert list(load_corpus(lambda: iter(documents[:3]))) == documents[:3]
    assert list(load_corpus(datasets.Dataset.from_dict({"text": documents[:4]}))) == documents[:4]
    streamed = datasets.Dataset.from_dict({"text": documents[:4]}).to_iterable_dataset()
    assert list(load_corpus(streamed)) == documents[:4]
    one_shot = load_corpus(iter(documents[:3]))
    assert list(one_shot) == documents[:3]
    with pytest.raises(CorpusError, match="read only once"):
        list(one_shot)


def test_local_dataset_directory_and_streaming_files(tmp_path, documents):
    import datasets

    datasets.Dataset.from_dict({"text": documents[:6]}).save_to_disk(str(tmp_path / "saved"))
    assert list(load_corpus(str(tmp_path / "saved"))) == documents[:6]
    write_jsonl(tmp_path / "x.jsonl", documents[:6])
    streamed = datasets.load_dataset("json", data_files=str(tmp_path / "x.jsonl"), split="train", streaming=True)
    assert list(load_corpus(streamed)) == documents[:6]


def test_unknown_hub_dataset_offline_is_one_line_error():
    with pytest.raises(CorpusError, match="cannot load dataset 'no-such-owner/no-such-dataset'") as info:
        load_corpus("no-such-owner/no-such-dataset")
    assert "\n" not in str(info.value)


def test_mixture_weights_and_reproducibility():
    a = [f"a{i}" for i in range(1000)]
    b = [f"b{i}" for i in range(1000)]
    mixture = load_corpus([(a, 0.7), (b, 0.3)], seed=1)
    taken = [text for text, _ in zip(mixture, range(2000))]
    share_a = sum(t.startswith("a") for t in taken) / len(taken)
    assert 0.67 < share_a < 0.73
    again = [text for text, _ in zip(load_corpus([(a, 0.7), (b, 0.3)], seed=1), range(2000))]
    other = [text for text, _ in zip(load_corpus([(a, 0.7), (b, 0.3)], seed=2), range(2000))]
    assert taken == again and taken != other
    # each source is read in order and restarts when it runs out (a mixture is endless)
    assert [t for t in taken if t.startswith("b")][:3] == ["b0", "b1", "b2"]


@pytest.mark.parametrize("source_kind", ["jsonl", "jsonl.gz", "parquet", "list", "mixture", "shuffled"])
def test_resume_from_position_equals_uninterrupted(tmp_path, documents, source_kind):
    if source_kind.startswith("jsonl"):
        path = tmp_path / f"c.{source_kind}"
        write_jsonl(path, documents, opener=gzip.open if source_kind.endswith("gz") else open)
        corpus = load_corpus(str(path))
    elif source_kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": documents}), tmp_path / "c.parquet", row_group_size=7)
        corpus = load_corpus(str(tmp_path / "c.parquet"))
    elif source_kind == "list":
        corpus = load_corpus(documents)
    elif source_kind == "mixture":
        corpus = load_corpus([(documents, 1), (documents[::-1], 1)])
    else:
        write_jsonl(tmp_path / "c.jsonl.gz", documents, opener=gzip.open)
        corpus = load_corpus(str(tmp_path / "c.jsonl.gz"), shuffle_documents=True, seed=5)
    full = [t for t, _ in zip((t for t, _ in corpus.iter_documents(shard_index=1, shard_count=3)), range(150))]
    stream = corpus.iter_documents(shard_index=1, shard_count=3)
    head = [next(stream) for _ in range(40)]
    position = json.loads(json.dumps(head[-1][1]))  # positions survive a JSON round trip
    tail = [t for t, _ in zip((t for t, _ in corpus.iter_documents(position, shard_index=1, shard_count=3)), range(110))]
    assert [t for t, _ in head] + tail == full


def test_shards_are_disjoint_and_complete(tmp_path, documents):
    write_jsonl(tmp_path / "c.jsonl", documents)
    corpus = load_corpus(str(tmp_path / "c.jsonl"))
    shards = [list(t for t, _ in corpus.iter_documents(shard_index=i, shard_count=4)) for i in range(4)]
    assert sorted(sum(shards, [])) == sorted(documents)
    assert sum(len(s) for s in shards) == len(documents)


def test_document_shuffle_mixes_a_sorted_corpus(tmp_path):
    sources = ["bible", "dictionary", "manual", "novel"]
    sorted_documents = [f"{source} {i}" for source in sources for i in range(250)]  # stored sorted by source
    write_jsonl(tmp_path / "sorted.jsonl", sorted_documents)
    streamed = [t for t in load_corpus(str(tmp_path / "sorted.jsonl"))][:100]
    assert {t.split()[0] for t in streamed} == {"bible"}  # the problem: the first 100 documents are one source
    corpus = load_corpus(str(tmp_path / "sorted.jsonl"), shuffle_documents=True, seed=3)
    epoch0 = [t for t, _ in corpus.iter_documents()]
    assert sorted(epoch0) == sorted(sorted_documents)  # a permutation: nothing lost or repeated
    first = collections.Counter(t.split()[0] for t in epoch0[:200])
    assert set(first) == set(sources) and all(25 <= n <= 75 for n in first.values())  # about 50 of each
    epoch1 = [t for t, _ in corpus.iter_documents(corpus.epoch_start(1))]
    assert sorted(epoch1) == sorted(sorted_documents) and epoch1 != epoch0  # reshuffled each epoch
    assert [t for t, _ in load_corpus(str(tmp_path / "sorted.jsonl"), shuffle_documents=True, seed=3)
            .iter_documents()] == epoch0  # the seed fixes the order
    assert [t for t, _ in load_corpus(str(tmp_path / "sorted.jsonl"), shuffle_documents=True, seed=4)
            .iter_documents()] != epoch0
    shards = [[t for t, _ in corpus.iter_documents(shard_index=i, shard_count=3)] for i in range(3)]
    assert sorted(sum(shards, [])) == sorted(sorted_documents)  # ranks/workers: disjoint and complete


def test_document_shuffle_of_a_mixture_shuffles_each_source(tmp_path):
    from sslnlp.data.corpus import MixtureCorpus, ShuffledCorpus

    write_jsonl(tmp_path / "a.jsonl", [f"a{i}" for i in range(100)])
    write_jsonl(tmp_path / "b.jsonl", [f"b{i}" for i in range(100)])
    mixture = load_corpus([(str(tmp_path / "a.jsonl"), 1), (str(tmp_path / "b.jsonl"), 1)], shuffle_documents=True)
    assert isinstance(mixture, MixtureCorpus) and all(isinstance(c, ShuffledCorpus) for c in mixture.corpora)
    taken = [t for t, _ in zip(mixture, range(100))]
    assert [t for t in taken if t.startswith("a")][:5] != ["a0", "a1", "a2", "a3", "a4"]
    with pytest.raises(CorpusError, match="mixture"):
        ShuffledCorpus(mixture)


def test_held_out_documents_come_from_the_stored_order_before_the_shuffle(tmp_path):
    from sslnlp.config import DataConfig
    from sslnlp.data.corpus import ShuffledCorpus
    from sslnlp.data.corpus import training_and_validation_corpora

    stored = [f"document {i}" for i in range(100)]
    write_jsonl(tmp_path / "c.jsonl", stored)
    data = DataConfig(train_files=str(tmp_path / "c.jsonl"), validation_holdout_every=10, shuffle_documents=True)
    train, validation = training_and_validation_corpora(data)
    assert isinstance(train, ShuffledCorpus)
    assert list(validation) == stored[9::10]  # the same held-out documents as without the shuffle
    trained_on = list(train)
    in_stored_order = [d for d in stored if d not in stored[9::10]]
    assert sorted(trained_on) == sorted(in_stored_order) and trained_on != in_stored_order
