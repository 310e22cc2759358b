import pytest
import torch

from sslnlp.data.masking import CausalLanguageModelingCollator, MaskedLanguageModelingCollator, pad_sequences

VOCAB = 1000
SPECIALS = [0, 1, 2, 3, 4]  # pad unk cls sep mask
MASK, PAD, CLS, SEP = 4, 0, 2, 3


def blocks(batch=64, length=128, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch, length), generator=generator)
    ids[:, 0] = CLS
    ids[:, -1] = SEP
    ids[:, 40] = SEP  # a document boundary inside the block
    return ids


def collator(**options):
    return MaskedLanguageModelingCollator(mask_token_id=MASK, vocab_size=VOCAB, special_token_ids=SPECIALS,
                                          pad_token_id=PAD, seed=0, **options)


@pytest.mark.parametrize("rate", [0.15, 0.4])
def test_token_masking_rate_and_80_10_10_split(rate):
    ids = blocks(256)
    out = collator(mlm_probability=rate)({"input_ids": ids})
    chosen = out["labels"] != -100
    candidates = ids > 4
    assert abs(chosen.sum() / candidates.sum() - rate) < 0.01
    assert torch.equal(out["labels"][chosen], ids[chosen])
    assert not chosen[~candidates].any()  # specials never masked
    masked = out["input_ids"][chosen]
    original = ids[chosen]
    share_mask = (masked == MASK).float().mean()
    share_same = (masked == original).float().mean()
    share_random = 1 - share_mask - share_same
    assert abs(share_mask - 0.8) < 0.02 and abs(share_same - 0.1) < 0.015 and abs(share_random - 0.1) < 0.015
    assert (out["input_ids"][~chosen] == ids[~chosen]).all()
    assert not torch.isin(out["input_ids"][chosen & (out["input_ids"] != MASK)], torch.tensor([0, 1, 2, 3])).any()


def test_split_is_configurable():
    ids = blocks(128)
    out = collator(mask_replace_probability=0.5, random_replace_probability=0.0)({"input_ids": ids})
    chosen = out["labels"] != -100
    assert abs((out["input_ids"][chosen] == MASK).float().mean() - 0.5) < 0.03
    assert (out["input_ids"][chosen & (out["input_ids"] != MASK)] == ids[chosen & (out["input_ids"] != MASK)]).all()


def test_fixed_mask_count_gives_static_shapes():
    ids = blocks(32)
    out = collator(fixed_mask_count=True)({"input_ids": ids})
    per_row = (out["labels"] != -100).sum(1)
    expected = round((128 - 3) * 0.15)
    assert (per_row == expected).all()


def test_seeded_masks_repeat_and_padding_is_never_masked():
    ids = blocks(8)
    assert torch.equal(collator()({"input_ids": ids})["labels"], collator()({"input_ids": ids})["labels"])
    features = [{"input_ids": [CLS] + list(range(10, 10 + n)) + [SEP]} for n in (5, 17, 30)]
    out = collator(mlm_probability=0.5)(features)
    assert out["input_ids"].shape == (3, 32)  # padded to a multiple of 8
    assert out["attention_mask"].sum(1).tolist() == [7, 19, 32]
    assert not (out["labels"][out["attention_mask"] == 0] != -100).any()


def word_starts_for(ids, mean_word_length=3, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(ids.shape, generator=generator) < 1 / mean_word_length


def test_whole_word_masking_masks_words_together():
    ids = blocks(256)
    starts = word_starts_for(ids)
    out = collator(masking="whole_word")({"input_ids": ids, "word_starts": starts})
    chosen = out["labels"] != -100
    candidates = ids > 4
    assert abs(chosen.sum() / candidates.sum() - 0.15) < 0.02
    assert not chosen[~candidates].any()
    # every word is entirely chosen or entirely not: inside a word (no start, previous token a candidate) the choice
    # equals the previous token's
    inside = ~starts[:, 1:] & candidates[:, 1:] & candidates[:, :-1]
    assert torch.equal(chosen[:, 1:][inside], chosen[:, :-1][inside])
    assert inside.sum() > 10000


def runs(mask_row):
    lengths, current = [], 0
    for value in mask_row.tolist() + [False]:
        if value:
            current += 1
        elif current:
            lengths.append(current)
            current = 0
    return lengths


@pytest.mark.parametrize("mean_span,rate", [(3.8, 0.03), (2.0, 0.03), (3.8, 0.15)])
def test_span_masking_rate_and_mean_length(mean_span, rate):
    ids = torch.randint(5, VOCAB, (256, 256), generator=torch.Generator().manual_seed(0))
    out = collator(masking="span", mlm_probability=rate, mean_span_length=mean_span, max_span_length=10)({"input_ids": ids})
    chosen = out["labels"] != -100
    assert abs(chosen.float().mean() - rate) < 0.01
    if rate < 0.05:  # spans rarely touch at a low rate, so runs of masked tokens are spans
        lengths = [n for row in chosen for n in runs(row)]
        assert max(lengths) <= 12
        assert abs(sum(lengths) / len(lengths) - mean_span) < 0.25


def test_span_masking_covers_whole_words():
    ids = blocks(64)
    starts = word_starts_for(ids)
    out = collator(masking="span")({"input_ids": ids, "word_starts": starts})
    chosen = out["labels"] != -100
    candidates = ids > 4
    inside = ~starts[:, 1:] & candidates[:, 1:] & candidates[:, :-1]
    assert torch.equal(chosen[:, 1:][inside], chosen[:, :-1][inside])


def test_whole_word_needs_word_starts_and_bad_options_are_rejected():
    with pytest.raises(ValueError, match="word_starts"):
        collator(masking="whole_word")({"input_ids": blocks(2)})
    with pytest.raises(ValueError, match="unknown masking 'words'"):
        collator(masking="words")
    with pytest.raises(ValueError, match="fixed_mask_count works with masking='token' only"):
        collator(masking="span", fixed_mask_count=True)


def test_causal_labels_ignore_padding():
    out = CausalLanguageModelingCollator(pad_token_id=PAD)([{"input_ids": [5, 6, 7]}, {"input_ids": list(range(5, 15))}])
    assert out["input_ids"].shape == (2, 16)
    assert out["labels"][0].tolist() == [5, 6, 7] + [-100] * 13
    packed = CausalLanguageModelingCollator(pad_token_id=PAD)({"input_ids": blocks(2)})
    assert torch.equal(packed["labels"], blocks(2)) and "attention_mask" not in packed


def test_pad_sequences_multiple():
    assert pad_sequences([[1, 2, 3]], 0, 8)["input_ids"].shape == (1, 8)
    assert pad_sequences([[1] * 9], 0, 8)["input_ids"].shape == (1, 16)
