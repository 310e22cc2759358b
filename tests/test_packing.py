import itertools
import pickle

import numpy as np
import pytest
import torch

from sslnlp.data.corpus import load_corpus
from sslnlp.data.masking import MaskedLanguageModelingCollator
from sslnlp.data.blocks import BlockStream
from sslnlp.data.packing import BlockLayout, PackedBlocks


def token_stream(tokenizer, documents, separator):
    """The reference: every document tokenized on its own, followed by the separator."""
    out = []
    for text in documents:
        out += tokenizer(text, add_special_tokens=False)["input_ids"] + [separator]
    return out


def contents(blocks, prefix_length, suffix_length, attention=None):
    rows = []
    for index, block in enumerate(blocks):
        block = list(block)
        if attention is not None and attention[index] is not None:
            block = block[: int(attention[index].sum())]
        rows += block[prefix_length: len(block) - suffix_length]
    return rows


@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_packing_loses_and_duplicates_nothing(documents, wordpiece_tokenizer, bpe_tokenizer, objective):
    tokenizer = wordpiece_tokenizer if objective == "mlm" else bpe_tokenizer
    layout = BlockLayout.encoder(tokenizer) if objective == "mlm" else BlockLayout.decoder(tokenizer)
    dataset = PackedBlocks(load_corpus(documents), tokenizer, 48, layout=layout, repeat=False, documents_per_batch=7)
    chunks = list(dataset.iter_shard(0))
    blocks = np.concatenate([c["input_ids"] for c in chunks])
    assert blocks.shape[1] == 48
    attention = [None] * (len(blocks) - 1) + [chunks[-1].get("attention_mask", [None])[0]]
    if objective == "mlm":
        assert (blocks[:, 0] == tokenizer.cls_token_id).all()
        assert all(block[int(a.sum()) - 1 if a is not None else -1] == tokenizer.sep_token_id for block, a in zip(blocks, attention))
        got = contents(blocks, 1, 1, attention)
        expected = token_stream(tokenizer, documents, tokenizer.sep_token_id)
    else:
        got = contents(blocks, 0, 0, attention)
        expected = token_stream(tokenizer, documents, tokenizer.eos_token_id)
    assert got == expected
    assert (blocks[:-1] != tokenizer.pad_token_id).all()  # only the final partial block is padded


def test_long_documents_are_split_not_truncated(wordpiece_tokenizer):
    long_document = " ".join(["the quiet student remembers an unbelievable story"] * 60)
    dataset = PackedBlocks(load_corpus([long_document]), wordpiece_tokenizer, 32, layout=BlockLayout.encoder(wordpiece_tokenizer), repeat=False)
    blocks = np.concatenate([c["input_ids"] for c in dataset.iter_shard(0)])
    assert len(blocks) > 10
    expected = wordpiece_tokenizer(long_document, add_special_tokens=False)["input_ids"]
    assert contents(blocks[:-1], 1, 1) == expected[: 30 * (len(blocks) - 1)]


def test_word_starts_survive_packing(documents, wordpiece_tokenizer):
    rare = ["The xylophonist quizzically rebuilt unbelievably complicated windowsills."] * 3  # words split into pieces
    dataset = PackedBlocks(load_corpus(rare + documents), wordpiece_tokenizer, 40, layout=BlockLayout.encoder(wordpiece_tokenizer, word_starts=True),
                           repeat=False)
    chunk = next(dataset.iter_shard(0))
    tokens = [wordpiece_tokenizer.convert_ids_to_tokens(row.tolist()) for row in chunk["input_ids"]]
    for row_tokens, row_starts in zip(tokens, chunk["word_starts"]):
        for position, (token, start) in enumerate(zip(row_tokens, row_starts)):
            if token.startswith("##"):
                assert not start
            elif token not in wordpiece_tokenizer.all_special_tokens and position > 1:
                assert start, (token, row_tokens)
    assert any(t.startswith("##") for row in tokens for t in row)  # the fixture does split words


def documents_in(rows, separator):
    """Split a token stream back into documents (token tuples)."""
    stream = [t for row in rows for t in row]
    docs, current = [], []
    for token in stream:
        if token == separator:
            docs.append(tuple(current))
            current = []
        else:
            current.append(token)
    return docs


def test_two_ranks_two_workers_are_disjoint_and_complete(documents, bpe_tokenizer):
    unique = [f"Document number {i}. {text}" for i, text in enumerate(documents[:80])]
    corpus = load_corpus(unique)
    seen = []
    for rank in range(2):
        dataset = PackedBlocks(corpus, bpe_tokenizer, 64, layout=BlockLayout.decoder(bpe_tokenizer), rank=rank, world_size=2, num_workers=2,
                               repeat=False, documents_per_batch=3)
        stream = BlockStream(dataset, batch_size=4, num_workers=2)
        shards = {}
        for chunk in stream._chunks():  # chunks carry their shard index
            shards.setdefault(chunk["shard"], []).append(chunk)
        assert sorted(shards) == [2 * rank, 2 * rank + 1]
        for chunks in shards.values():
            rows = [row[: int(c["attention_mask"][i].sum())] if "attention_mask" in c else row
                    for c in chunks for i, row in enumerate(c["input_ids"].tolist())]
            seen.append(documents_in(rows, bpe_tokenizer.eos_token_id))
    everything = [doc for shard in seen for doc in shard]
    expected = [tuple(bpe_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in unique]
    assert len(everything) == len(set(everything)) == len(expected)
    assert set(everything) == set(expected)
    for a, b in itertools.combinations(seen, 2):
        assert not set(a) & set(b)


@pytest.mark.parametrize("num_workers,shuffle_documents", [(0, False), (2, False), (0, True)])
def test_stream_resumes_exactly(documents, wordpiece_tokenizer, num_workers, shuffle_documents):
    def make():
        corpus = load_corpus(documents, shuffle_documents=shuffle_documents, seed=2)
        dataset = PackedBlocks(corpus, wordpiece_tokenizer, 32, layout=BlockLayout.encoder(wordpiece_tokenizer, word_starts=True),
                               num_workers=num_workers, documents_per_batch=5)
        collator = MaskedLanguageModelingCollator.from_tokenizer(wordpiece_tokenizer, masking="whole_word", seed=3)
        return BlockStream(dataset, batch_size=8, collate=collator, num_workers=num_workers, shuffle_buffer_size=50, seed=1), collator

    # 3 epochs' worth of the small corpus, so the resume crosses epoch boundaries
    stream, collator = make()
    uninterrupted = list(itertools.islice(stream, 120))
    stream, collator = make()
    first = list(itertools.islice(stream, 37))
    saved = pickle.loads(pickle.dumps({"data": stream.state_dict(), "masks": collator.state_dict()}))
    stream, collator = make()
    stream.load_state_dict(saved["data"])
    collator.load_state_dict(saved["masks"])
    rest = list(itertools.islice(stream, 83))
    for expected, got in zip(uninterrupted, first + rest, strict=True):
        assert torch.equal(expected["input_ids"], got["input_ids"])
        assert torch.equal(expected["labels"], got["labels"])


def test_resume_does_not_reread_consumed_documents(tmp_path, documents, wordpiece_tokenizer):
    import json

    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in documents))

    def make():
        return BlockStream(PackedBlocks(load_corpus(str(path)), wordpiece_tokenizer, 32, layout=BlockLayout.encoder(wordpiece_tokenizer), documents_per_batch=10), batch_size=4)

    stream = make()
    uninterrupted = list(itertools.islice(stream, 60))
    stream = make()
    first = list(itertools.islice(stream, 20))
    state = stream.state_dict()
    offset = state["shard_states"]["0"]["position"]["offset"]
    assert offset > 0
    # Overwrite what was consumed with garbage: a resume that re-read it would fail on malformed JSON.
    raw = path.read_bytes()
    path.write_bytes(b"x" * (offset - 1) + b"\n" + raw[offset:])
    stream = make()
    stream.load_state_dict(state)
    rest = list(itertools.islice(stream, 20))
    for expected, got in zip(uninterrupted[:40], first + rest, strict=True):
        assert torch.equal(expected["input_ids"], got["input_ids"])


def test_mismatched_shard_count_is_refused(documents, wordpiece_tokenizer):
    stream = BlockStream(PackedBlocks(load_corpus(documents), wordpiece_tokenizer, 32, layout=BlockLayout.encoder(wordpiece_tokenizer)), batch_size=4)
    next(iter(stream))
    other = BlockStream(PackedBlocks(load_corpus(documents), wordpiece_tokenizer, 32, layout=BlockLayout.encoder(wordpiece_tokenizer), world_size=2), batch_size=4)
    with pytest.raises(ValueError, match="same number of processes"):
        other.load_state_dict(stream.state_dict())


@pytest.mark.parametrize("seed", range(4))
def test_padded_final_block_keeps_its_mask_in_any_batch_position(documents, wordpiece_tokenizer, seed):
    dataset = PackedBlocks(load_corpus(documents[:57]), wordpiece_tokenizer, 32, layout=BlockLayout.encoder(wordpiece_tokenizer),
                           repeat=False)
    stream = BlockStream(dataset, batch_size=4, collate=MaskedLanguageModelingCollator.from_tokenizer(wordpiece_tokenizer),
                         shuffle_buffer_size=16, seed=seed)
    batches = list(stream)
    padded = [b for b in batches if "attention_mask" in b]
    assert len(padded) == 1  # the batch holding the final partial block, wherever it landed
    mask = padded[0]["attention_mask"]
    assert (mask.sum(1) < 32).sum() == 1 and (mask.sum(1) == 32).sum() == len(mask) - 1
    assert not (padded[0]["labels"][mask == 0] != -100).any()


def test_each_epoch_of_a_shuffled_corpus_has_its_own_order(documents, wordpiece_tokenizer):
    corpus = load_corpus(documents[:20], shuffle_documents=True, seed=1)
    dataset = PackedBlocks(corpus, wordpiece_tokenizer, 32, layout=BlockLayout.encoder(wordpiece_tokenizer), documents_per_batch=20)  # one chunk: one epoch
    first, second = itertools.islice(dataset.iter_shard(0), 2)
    assert first["state"]["position"] == {"epoch": 0, "index": 20}
    assert second["state"]["position"] == {"epoch": 1, "index": 20}
    orders = [[documents[:20].index(t) for t, _ in corpus.iter_documents(corpus.epoch_start(e))] for e in (0, 1)]
    assert orders[0] != orders[1] and sorted(orders[0]) == sorted(orders[1]) == list(range(20))


def test_packing_ignores_truncation_and_padding_set_on_the_tokenizer(documents, wordpiece_tokenizer):
    """A Hub tokenizer.json often enables truncation, and calling a tokenizer with truncation=True switches it on in
    the shared backend: packing must still see every token."""
    import copy

    tokenizer = copy.deepcopy(wordpiece_tokenizer)
    long_document = " ".join(documents[:40])
    tokenizer(long_document, truncation=True, max_length=16, padding="max_length")  # leaves truncation on
    assert tokenizer.backend_tokenizer.truncation is not None
    layout = BlockLayout.encoder(tokenizer)
    blocks = np.concatenate([c["input_ids"] for c in
                             PackedBlocks(load_corpus([long_document]), tokenizer, 32, layout=layout, repeat=False).iter_shard(0)])
    expected = tokenizer.backend_tokenizer
    expected.no_truncation()
    expected.no_padding()
    ids = expected.encode(long_document, add_special_tokens=False).ids
    assert len(ids) > 200
    content = [int(t) for t in blocks.flatten() if int(t) not in tokenizer.all_special_ids]
    assert content == ids
