import bz2
import gzip
import json
import lzma

import pytest

from sslnlp.corpus import CorpusError, load_corpus


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


@pytest.mark.parametrize("source_kind", ["jsonl", "jsonl.gz", "parquet", "list", "mixture"])
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
    else:
        corpus = load_corpus([(documents, 1), (documents[::-1], 1)])
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
