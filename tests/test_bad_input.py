"""Every malformed corpus gives a one-line error naming the file (and line) and what to do, or is skipped and counted."""

import gzip
import json

import pytest

from sslnlp.data.corpus import CorpusError, load_corpus
from sslnlp.data.packing import BlockLayout, PackedBlocks


def _jsonl(tmp_path, lines, name="bad.jsonl"):
    path = tmp_path / name
    path.write_bytes(b"".join(lines))
    return str(path)


GOOD = json.dumps({"text": "a fine document"}).encode() + b"\n"

CASES = {
    "missing file": (lambda p: str(p / "nope.jsonl"), r"nope.jsonl' does not exist; check the path"),
    "empty glob": (lambda p: str(p / "*.parquet"), r"matched no files"),
    "empty directory": (lambda p: str((p / "empty").mkdir() or p / "empty"), r"holds no corpus files"),
    "malformed json": (lambda p: _jsonl(p, [GOOD, b'{"text": "unterminated\n']), r"bad.jsonl:2: malformed JSON"),
    "missing text field": (lambda p: _jsonl(p, [GOOD, b'{"body": "x"}\n']), r"bad.jsonl:2: no 'text' field \(found \['body'\]\); set data.text_field"),
    "text not a string": (lambda p: _jsonl(p, [b'{"text": 3}\n']), r"bad.jsonl:1: field 'text' is int"),
    "invalid utf-8": (lambda p: _jsonl(p, [GOOD, GOOD, b'{"text": "caf\xe9"}\n']), r"bad.jsonl:3: invalid UTF-8"),
    "binary file": (lambda p: _jsonl(p, [b"\x7fELF\x00\x01\x02\n"], name="a.out.txt"), r"a.out.txt:1: contains NUL bytes"),
    "enormous line": (lambda p: _jsonl(p, [GOOD, b"x" * 5000, b"\n", GOOD], name="big.txt"), r"big.txt:2: record longer than max_document_bytes=1000"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_corpus_gives_one_line_error(tmp_path, case):
    make_path, pattern = CASES[case]
    with pytest.raises(CorpusError, match=pattern) as info:
        list(load_corpus(make_path(tmp_path), max_document_bytes=1000))
    assert "\n" not in str(info.value)


def test_truncated_gzip_names_the_file(tmp_path):
    payload = gzip.compress(b"".join(GOOD for _ in range(2000)))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(CorpusError, match=r"cut.jsonl.gz: cannot read past line \d+: the file is truncated or corrupt"):
        list(load_corpus(str(path)))


def test_skip_policy_skips_and_counts(tmp_path):
    path = _jsonl(tmp_path, [GOOD, b"not json\n", b'{"body": 1}\n', b'{"text": "caf\xe9"}\n', b"y" * 3000 + b"\n", GOOD])
    corpus = load_corpus(path, on_bad_record="skip", max_document_bytes=1000)
    assert list(corpus) == ["a fine document", "a fine document"]
    assert corpus.skipped_records == 4


def test_empty_corpus_is_reported_before_training(tmp_path, wordpiece_tokenizer):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    blocks = PackedBlocks(load_corpus(str(tmp_path / "empty.jsonl")), wordpiece_tokenizer, 32, layout=BlockLayout.encoder(wordpiece_tokenizer))
    with pytest.raises(CorpusError, match="has no documents"):
        next(iter(blocks))
