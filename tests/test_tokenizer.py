"""Unit tests for sslnlp.data.tokenizer: train each kind on a tiny corpus, save, reload with AutoTokenizer, check behaviour.

    HF_HUB_OFFLINE=1 python -m pytest tests/test_tokenizer.py -q
"""

import itertools
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never reach for the Hub

import pytest
import tokenizers.trainers
from transformers import AutoTokenizer

from sslnlp.cli import main
from sslnlp.data.tokenizer import (
    TOKENIZER_KINDS,
    load_tokenizer,
    round_up_vocab_size,
    special_tokens_for,
    train_tokenizer,
)

REQUESTED_VOCAB_SIZE = 300  # byte-level BPE needs >= 261 (256 bytes + 5 special tokens)
ROUNDED_VOCAB_SIZE = 320  # 300 rounded up to a multiple of 64
EXPECTED_SPECIAL_TOKEN_IDS = {
    "wordpiece": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4},
    "bpe": {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4},
    "unigram": {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4},
}


def make_fixture_corpus() -> list[str]:
    """About a hundred short lowercase sentences built from word combinations, so every test sees the same corpus."""
    subjects = ["the quick fox", "a sleepy dog", "my neighbour's cat", "an extraordinary parrot", "the tiny hedgehog"]
    verbs = ["jumped over", "walked around", "watched", "quietly ignored", "painted"]
    objects = ["the wooden fence.", "a muddy puddle.", "the enormous lighthouse!", "two sleepy turtles?",
               "an unbelievably tall tree, again and again."]
    return [f"{subject} {verb} {thing}" for subject, verb, thing in itertools.product(subjects, verbs, objects)]


@pytest.fixture
def recorded_trainer_vocab_sizes(monkeypatch):
    """Wrap the tokenizers trainer classes to record the vocab_size target each one is built with."""
    recorded_sizes = []
    for trainer_name in ("WordPieceTrainer", "BpeTrainer", "UnigramTrainer"):
        real_trainer_class = getattr(tokenizers.trainers, trainer_name)

        def recording_trainer(*args, real_trainer_class=real_trainer_class, **kwargs):
            trainer = real_trainer_class(*args, **kwargs)
            recorded_sizes.append(trainer.vocab_size)
            return trainer

        monkeypatch.setattr(tokenizers.trainers, trainer_name, recording_trainer)
    return recorded_sizes


@pytest.mark.parametrize("encoder", [True, False])
@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_trained_tokenizer_reloads_as_fast_tokenizer(kind, encoder, tmp_path, recorded_trainer_vocab_sizes):
    trained_tokenizer = train_tokenizer(make_fixture_corpus(), tmp_path, kind=kind, encoder=encoder,
                                        vocab_size=REQUESTED_VOCAB_SIZE, min_frequency=2)
    reloaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path)

    assert reloaded_tokenizer.is_fast
    assert recorded_trainer_vocab_sizes == [ROUNDED_VOCAB_SIZE]
    # A tiny corpus may not fill the target, but it must never exceed it.
    assert len(trained_tokenizer) == len(reloaded_tokenizer) <= ROUNDED_VOCAB_SIZE

    expected_special_tokens = special_tokens_for(kind, encoder)
    for attribute_name, token in expected_special_tokens.items():
        assert getattr(reloaded_tokenizer, attribute_name) == token
    expected_ids = {token: token_id for token, token_id in EXPECTED_SPECIAL_TOKEN_IDS[kind].items()
                    if token in expected_special_tokens.values()}
    assert {token: reloaded_tokenizer.convert_tokens_to_ids(token) for token in expected_ids} == expected_ids
    assert reloaded_tokenizer.mask_token is None or encoder or kind == "wordpiece"

    input_ids = reloaded_tokenizer("a sleepy dog watched the tiny hedgehog.").input_ids
    adds_special_tokens = encoder or kind == "wordpiece"
    if adds_special_tokens:
        assert input_ids[0] == reloaded_tokenizer.cls_token_id == reloaded_tokenizer.bos_token_id
        assert input_ids[-1] == reloaded_tokenizer.sep_token_id == reloaded_tokenizer.eos_token_id
    else:  # GPT-2 style: the packing code, not the tokenizer, puts EOS between documents
        assert not set(input_ids) & set(reloaded_tokenizer.all_special_ids)


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_word_ids_cover_every_non_special_token_and_group_pieces(kind, tmp_path):
    tokenizer = train_tokenizer(make_fixture_corpus(), tmp_path, kind=kind, vocab_size=REQUESTED_VOCAB_SIZE)
    # "foxhedgehogs" never occurs in the corpus, so every kind has to split it into several pieces.
    batch = tokenizer(["the foxhedgehogs watched a puddle", "a dog"])
    for row_index, row_input_ids in enumerate(batch.input_ids):
        word_ids = batch.word_ids(row_index)
        assert len(word_ids) == len(row_input_ids)
        for token_id, word_id in zip(row_input_ids, word_ids):
            assert (word_id is None) == (token_id in tokenizer.all_special_ids)
    first_row_word_ids = [word_id for word_id in batch.word_ids(0) if word_id is not None]
    assert first_row_word_ids.count(1) >= 2  # the unseen word: several pieces, one word id
    # No punctuation: WordPiece and byte-level BPE split it off as its own word, Metaspace (unigram) does not.
    assert sorted(set(first_row_word_ids)) == list(range(5))


def test_decode_round_trips(tmp_path):
    corpus = make_fixture_corpus()
    bpe_tokenizer = train_tokenizer(corpus, tmp_path / "bpe", kind="bpe", vocab_size=REQUESTED_VOCAB_SIZE)
    unseen_sentence = "The Quick FOX painted 3 lighthouses; café ☕ naïve!"
    assert bpe_tokenizer.decode(bpe_tokenizer(unseen_sentence).input_ids, skip_special_tokens=True) == unseen_sentence

    wordpiece_tokenizer = train_tokenizer(corpus, tmp_path / "wordpiece", kind="wordpiece",
                                          vocab_size=REQUESTED_VOCAB_SIZE)
    cased_sentence = "The Quick Fox watched the wooden fence."
    decoded = wordpiece_tokenizer.decode(wordpiece_tokenizer(cased_sentence).input_ids, skip_special_tokens=True)
    assert decoded == cased_sentence.lower()

    unigram_tokenizer = train_tokenizer(corpus, tmp_path / "unigram", kind="unigram", vocab_size=REQUESTED_VOCAB_SIZE)
    assert unigram_tokenizer.decode(unigram_tokenizer(corpus[7]).input_ids, skip_special_tokens=True) == corpus[7]


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_mask_token_in_text_is_one_token(kind, tmp_path):
    tokenizer = train_tokenizer(make_fixture_corpus(), tmp_path, kind=kind, vocab_size=REQUESTED_VOCAB_SIZE)
    input_ids = tokenizer(f"a sleepy {tokenizer.mask_token} watched the fence.").input_ids
    assert input_ids.count(tokenizer.mask_token_id) == 1


def test_vocab_size_rounds_up():
    assert round_up_vocab_size(200, 64) == 256
    assert round_up_vocab_size(256, 64) == 256
    assert round_up_vocab_size(200, 0) == round_up_vocab_size(200, 1) == 200


@pytest.mark.parametrize("empty_corpus", [[], ["", "   \n", "\t"]])
def test_empty_corpus_is_rejected(empty_corpus):
    with pytest.raises(ValueError, match="corpus is empty"):
        train_tokenizer(empty_corpus)


def test_max_documents_stops_reading_the_stream(tmp_path):
    corpus = make_fixture_corpus()
    max_documents = 30
    documents_pulled = 0

    def stream_that_fails_past_the_limit():
        nonlocal documents_pulled
        for document in itertools.cycle(corpus):
            documents_pulled += 1
            if documents_pulled > max_documents:
                raise AssertionError(f"stream pulled past max_documents={max_documents}")
            yield document

    tokenizer = train_tokenizer(stream_that_fails_past_the_limit(), kind="bpe", vocab_size=REQUESTED_VOCAB_SIZE,
                                max_documents=max_documents)
    assert documents_pulled == max_documents
    assert len(tokenizer) > 0


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match="wordpiece, bpe, unigram"):
        train_tokenizer(make_fixture_corpus(), kind="sentencepiece")
    with pytest.raises(ValueError, match="byte-level BPE needs vocab_size >= 261"):
        train_tokenizer(make_fixture_corpus(), kind="bpe", vocab_size=200)
    with pytest.raises(TypeError, match="documents must be strings"):
        train_tokenizer([{"text": "a dict, not a string"}])


def test_load_tokenizer(tmp_path):
    train_tokenizer(make_fixture_corpus(), tmp_path / "trained", kind="unigram", vocab_size=REQUESTED_VOCAB_SIZE)
    loaded_tokenizer = load_tokenizer(str(tmp_path / "trained"))
    assert loaded_tokenizer.is_fast and loaded_tokenizer.mask_token == "<mask>"
    assert load_tokenizer(loaded_tokenizer) is loaded_tokenizer

    missing_directory = str(tmp_path / "no-such-tokenizer")
    with pytest.raises(ValueError, match="cannot load tokenizer") as error_info:
        load_tokenizer(missing_directory)
    assert missing_directory in str(error_info.value)
    assert "\n" not in str(error_info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no tokenizer.json"):
        load_tokenizer(tmp_path / "empty")


def test_tokenizer_command_trains_from_files(tmp_path, capsys):
    pytest.importorskip("sslnlp.data.corpus")
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text("\n".join(make_fixture_corpus()) + "\n", encoding="utf-8")
    output_dir = tmp_path / "tokenizer"
    main(["tokenizer", str(corpus_file), "--output-dir", str(output_dir), "--kind", "bpe", "--decoder",
          "--vocab-size", str(REQUESTED_VOCAB_SIZE), "--max-documents", "40"])

    summary_lines = capsys.readouterr().out.strip().splitlines()
    assert len(summary_lines) == 1 and "40 documents" in summary_lines[0]
    reloaded_tokenizer = AutoTokenizer.from_pretrained(output_dir)
    assert reloaded_tokenizer.is_fast and reloaded_tokenizer.mask_token is None
