"""data.attention_within_documents: document ids and positions from the separators of packed blocks; a packed block
gives every document what it gets alone (BERT, RoBERTa, ELECTRA, ModernBERT, GPT-2, Llama; sdpa and eager); padding
stays masked; the masks and targets of the collators are unchanged; unsupported set-ups fail with one line before
training; pretrain() trains with the option on."""

import json

import pytest
import torch
from conftest import tiny_overrides

from sslnlp.config import ConfigError, DataConfig, ModelConfig, PretrainConfig, load_config
from sslnlp.data.documents import (
    DocumentCollator,
    document_attention_mask,
    document_ids,
    document_position_ids,
    varlen_lengths,
)
from sslnlp.data.masking import CausalLanguageModelingCollator, MaskedLanguageModelingCollator
from sslnlp.models.modeling import ModelError, SparseMaskedLMHead, dense_loss, model_inputs
from sslnlp.objectives import build_objective
from sslnlp.data.packing import BlockPacker

PAD, CLS, SEP, MASK = 1, 2, 3, 4  # SEP is also the decoders' EOS; content ids are 5..99
VOCAB = 100
ENCODER_BLOCK = [CLS, 10, 11, 12, SEP, 20, 21, SEP, 30, 31, 32, SEP]  # three documents, the last cut by the block edge
ENCODER_BLOCK_SUFFIX_AFTER_SEPARATOR = [CLS, 10, 11, SEP, 20, SEP, SEP]  # the last document ended: its SEP + suffix
DECODER_BLOCK = [10, 11, 12, SEP, 20, 21, SEP, 30, 31, 32]

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=64)
# model type -> (encoder, config values); every config has dropout but the tests run in eval mode.
ARCHITECTURES = {
    "bert": (True, SMALL),
    "roberta": (True, SMALL),  # learned positions from pad_token_id + 1 = 2
    "electra": (True, dict(SMALL, embedding_size=16)),
    # sliding-window layers (window 2 on each side) between global ones: the window must survive the document mask
    "modernbert": (True, dict(SMALL, num_hidden_layers=3, global_attn_every_n_layers=2, local_attention=4,
                              bos_token_id=CLS, eos_token_id=SEP, cls_token_id=CLS, sep_token_id=SEP)),
    "gpt2": (False, dict(n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=SEP, eos_token_id=SEP)),
    "llama": (False, dict(SMALL, num_key_value_heads=1, bos_token_id=CLS, eos_token_id=SEP)),
}


def tiny_model(model_type: str, attn_implementation: str = "sdpa"):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    encoder, values = ARCHITECTURES[model_type]
    config = AutoConfig.for_model(model_type, vocab_size=VOCAB, pad_token_id=PAD, **values)
    torch.manual_seed(0)
    auto = AutoModelForMaskedLM if encoder else AutoModelForCausalLM
    return auto.from_config(config, attn_implementation=attn_implementation).eval()


def packed_blocks(encoder: bool, length: int = 24) -> torch.Tensor:
    """Two blocks [2, length] from sslnlp's own packer: documents of 2 to 11 tokens, at least three per block."""
    generator = torch.Generator().manual_seed(1)
    lengths = [7, 4, 9, 2, 11, 5, 3, 8]
    documents = [torch.randint(5, VOCAB, (n,), generator=generator).tolist() for n in lengths]
    packer = BlockPacker(length, [CLS] if encoder else [], [SEP] if encoder else [], SEP, with_word_starts=False)
    blocks, _ = packer.add(documents, None)
    return torch.as_tensor(blocks[:2], dtype=torch.long)


# -------------------------------------------------------------------------------------- document ids, positions


def test_document_ids_and_positions_restart_after_each_separator():
    encoder = torch.tensor([ENCODER_BLOCK])
    assert document_ids(encoder, SEP, block_suffix=True).tolist() == [[0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2]]
    assert document_position_ids(document_ids(encoder, SEP, block_suffix=True)).tolist() == \
        [[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3]]
    # the suffix right after a document's own separator stays with that document (no one-token document)
    ended = torch.tensor([ENCODER_BLOCK_SUFFIX_AFTER_SEPARATOR])
    assert document_ids(ended, SEP, block_suffix=True).tolist() == [[0, 0, 0, 0, 1, 1, 1]]
    assert document_ids(ended, SEP, block_suffix=False).tolist() == [[0, 0, 0, 0, 1, 1, 2]]
    decoder = torch.tensor([DECODER_BLOCK])
    ids = document_ids(decoder, SEP)
    assert ids.tolist() == [[0, 0, 0, 0, 1, 1, 1, 2, 2, 2]]
    assert document_position_ids(ids).tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 1, 2]]
    # padding: document -1, and the suffix is the last real token of each row
    padded = torch.tensor([[CLS, 10, SEP, 20, SEP, PAD, PAD], [CLS, 10, 11, SEP, 20, 21, SEP]])
    attention = (padded != PAD).long()
    assert document_ids(padded, SEP, attention, block_suffix=True).tolist() == \
        [[0, 0, 0, 1, 1, -1, -1], [0, 0, 0, 0, 1, 1, 1]]


def test_mask_is_block_diagonal_causal_for_decoders_and_padding_never_attended():
    ids = torch.tensor([[0, 0, 1, 1, 1, -1]])
    mask = document_attention_mask(ids)[0, 0]
    expected = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 1, 0],
                             [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    causal = document_attention_mask(ids, causal=True)[0, 0]
    assert torch.equal(causal, expected & torch.ones(6, 6, dtype=torch.bool).tril())
    assert bool(causal.any(-1).all())  # no empty row: SDPA would return NaN there
    window = document_attention_mask(torch.zeros(1, 6, dtype=torch.long), window=1)[0, 0]
    assert window.sum(-1).tolist() == [2, 3, 3, 3, 3, 2]


def test_flash_attention_lengths_cover_every_document_of_the_flattened_batch():
    ids = torch.tensor([[0, 0, 0, 1, 1, -1], [0, 1, 1, 1, 1, 1]])
    lengths = varlen_lengths(ids)
    assert lengths["cu_seq_lens_q"].tolist() == [0, 3, 5, 6, 7, 12] and lengths["cu_seq_lens_q"].dtype == torch.int32
    assert lengths["max_length_q"] == lengths["max_length_k"] == 5


# ------------------------------------------------------------------------------ packed block == documents alone


def run_alone(model, tokens: torch.Tensor):
    return model(input_ids=tokens[None], output_hidden_states=True)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("model_type", list(ARCHITECTURES))
def test_packed_block_gives_each_document_what_it_gets_alone(model_type, attn_implementation):
    """Hidden states and LM logits of every token equal those of its document run alone (its tokens as the block
    holds them, positions from the start); with the option off they differ."""
    encoder = ARCHITECTURES[model_type][0]
    model = tiny_model(model_type, attn_implementation)
    blocks = packed_blocks(encoder)
    documents = document_ids(blocks, SEP, block_suffix=encoder)
    assert int(documents.amax(1).min()) >= 2  # at least three documents per block
    with torch.no_grad():
        inputs = model_inputs(model, {"input_ids": blocks, "document_ids": documents})
        packed = model(**inputs, output_hidden_states=True)
        plain = model(input_ids=blocks, output_hidden_states=True)
        worst_on, worst_off = 0.0, 0.0
        for row in range(len(blocks)):
            for document in range(int(documents[row].max()) + 1):
                selected = documents[row] == document
                alone = run_alone(model, blocks[row, selected])
                for name in ("hidden_states", "logits"):
                    reference = alone.logits[0] if name == "logits" else alone.hidden_states[-1][0]
                    on = packed.logits[row] if name == "logits" else packed.hidden_states[-1][row]
                    off = plain.logits[row] if name == "logits" else plain.hidden_states[-1][row]
                    torch.testing.assert_close(on[selected], reference, atol=1e-5, rtol=1e-5)
                    worst_on = max(worst_on, float((on[selected] - reference).abs().max()))
                    worst_off = max(worst_off, float((off[selected] - reference).abs().max()))
    assert worst_on < 1e-5 < 1e-2 < worst_off, (worst_on, worst_off)


def test_gpt2_mask_equals_transformers_own_packed_sequence_detection_which_a_cache_turns_off():
    """Decoders: with position ids restarting and no attention mask, transformers' create_causal_mask finds the
    packed documents itself (masking_utils.find_packed_sequence_indices) and gives what our 4D mask gives, but only
    without a cache: GPT-2's config has use_cache=True, its forward then builds a DynamicCache and
    _preprocess_mask_arguments skips the detection, attending across documents. Hence sslnlp passes the mask."""
    model = tiny_model("gpt2")
    blocks = packed_blocks(encoder=False)
    documents = document_ids(blocks, SEP)
    positions = document_position_ids(documents)
    with torch.no_grad():
        ours = model(**model_inputs(model, {"input_ids": blocks, "document_ids": documents})).logits
        theirs = model(input_ids=blocks, position_ids=positions, use_cache=False).logits
        with_cache = model(input_ids=blocks, position_ids=positions).logits
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)
    assert model.config.use_cache and float((with_cache - ours).abs().max()) > 1e-2


@pytest.mark.parametrize("model_type", ["bert", "roberta", "modernbert"])
def test_sparse_head_and_dense_loss_pass_the_documents_to_the_encoder(model_type):
    """The MLM losses sslnlp trains with (SparseMaskedLMHead, dense_loss) give the masked positions the logits
    their documents give alone."""
    model = tiny_model(model_type)
    blocks = packed_blocks(encoder=True)
    documents = document_ids(blocks, SEP, block_suffix=True)
    chosen = torch.zeros_like(blocks, dtype=torch.bool)
    chosen[:, 3::5] = True
    chosen &= blocks > MASK
    batch = {"input_ids": torch.where(chosen, MASK, blocks), "labels": torch.where(chosen, blocks, -100),
             "document_ids": documents}
    expected = []
    with torch.no_grad():
        for row in range(len(blocks)):
            logits = torch.zeros(blocks.shape[1], VOCAB)
            for document in range(int(documents[row].max()) + 1):
                selected = documents[row] == document
                logits[selected] = run_alone(model, batch["input_ids"][row, selected]).logits[0]
            expected.append(logits[chosen[row]])
        expected = torch.cat(expected)
        head = SparseMaskedLMHead(model)
        _, sparse_logits, targets = head.forward(model, batch)
        head.handle.remove()
        _, dense_logits, _ = dense_loss(model, batch)
    assert torch.equal(targets, blocks[chosen])
    torch.testing.assert_close(sparse_logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dense_logits, expected, atol=1e-5, rtol=1e-5)


def test_padded_rows_stay_masked():
    """Variable-length examples padded by the collator: padding is never attended and the real tokens get what
    their documents get alone."""
    model = tiny_model("bert")
    examples = [{"input_ids": [CLS, 10, 11, 12, SEP, 20, 21, SEP]}, {"input_ids": [CLS, 30, SEP, 40, 41, SEP]}]
    collator = DocumentCollator(CausalLanguageModelingCollator(pad_token_id=PAD), SEP, block_suffix=True)
    batch = collator(examples)
    assert batch["attention_mask"].tolist()[1] == [1] * 6 + [0] * 2
    assert batch["document_ids"].tolist() == [[0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1, -1, -1]]
    inputs = model_inputs(model, {"input_ids": batch["input_ids"], "document_ids": batch["document_ids"]})
    mask = inputs["attention_mask"][:, 0]  # [B, L, L]
    real = batch["attention_mask"].bool()
    assert not bool((mask & real[:, :, None] & ~real[:, None, :]).any())  # no real token attends to padding
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states[-1]
        for row, example in enumerate(examples):
            for document in range(int(batch["document_ids"][row].max()) + 1):
                selected = batch["document_ids"][row] == document
                alone = run_alone(model, batch["input_ids"][row, selected]).hidden_states[-1][0]
                torch.testing.assert_close(hidden[row, selected], alone, atol=1e-5, rtol=1e-5)
    assert bool(torch.isfinite(hidden).all())


def test_masking_and_targets_are_unchanged_and_never_touch_separators():
    blocks = packed_blocks(encoder=True, length=64)
    options = dict(mask_token_id=MASK, vocab_size=VOCAB, special_token_ids=[PAD, CLS, SEP, MASK], pad_token_id=PAD,
                   mlm_probability=0.4, seed=7)
    unwrapped = MaskedLanguageModelingCollator(**options)
    plain = unwrapped({"input_ids": blocks})
    wrapped = DocumentCollator(MaskedLanguageModelingCollator(**options), SEP, block_suffix=True)
    batch = wrapped({"input_ids": blocks})
    assert torch.equal(batch["input_ids"], plain["input_ids"]) and torch.equal(batch["labels"], plain["labels"])
    assert torch.equal(batch["input_ids"] == SEP, blocks == SEP)  # separators neither masked nor drawn
    assert torch.equal(batch["document_ids"], document_ids(blocks, SEP, block_suffix=True))
    assert torch.equal(wrapped.state_dict()["generator"], unwrapped.state_dict()["generator"])  # resumable
    decoder = CausalLanguageModelingCollator(pad_token_id=PAD)
    blocks = packed_blocks(encoder=False)
    assert torch.equal(DocumentCollator(decoder, SEP, False)({"input_ids": blocks})["labels"], blocks)


# ------------------------------------------------------------------------------------------------ refusals


def objective_for(name: str, model_type: str = "bert", attn_implementation: str = "sdpa", **objective):
    from sslnlp.config import objective_config_class

    config = objective_config_class(name)(**objective)
    return build_objective(config, ModelConfig(model_type=model_type, attn_implementation=attn_implementation),
                           DataConfig(attention_within_documents=True))


def test_an_architecture_that_cannot_is_refused_in_one_line_before_training():
    from transformers import AutoConfig

    deberta = AutoConfig.for_model("deberta-v2", vocab_size=VOCAB, **SMALL)
    with pytest.raises(ModelError, match=r"data.attention_within_documents is not supported for model type "
                                         r"'deberta-v2'") as error:
        objective_for("mlm", "deberta-v2").check_model_config(deberta)
    assert "\n" not in str(error.value)
    bert = AutoConfig.for_model("bert", vocab_size=VOCAB, **SMALL)
    with pytest.raises(ModelError, match="attention_within_documents works with model.attn_implementation sdpa, "
                                         "eager or flash_attention_2/3, not 'flex_attention'"):
        objective_for("mlm", attn_implementation="flex_attention").check_model_config(bert)
    objective_for("electra").check_model_config(bert)  # supported: no error
    with pytest.raises(ModelError, match="'deberta-v2'"):
        objective_for("electra", "deberta-v2").check_model_config(deberta)


def test_an_objective_without_support_is_refused_and_simcse_needs_nothing():
    import objectives_for_tests  # noqa: F401  (registers random_token_detection)

    with pytest.raises(ConfigError, match="data.attention_within_documents is not supported by "
                                          "objective.name='random_token_detection'"):
        objective_for("random_token_detection")
    from sslnlp.objectives.simcse import SegmentCollator

    simcse = objective_for("simcse")  # one document per row already: accepted, nothing to add
    assert isinstance(simcse.build_collator(None, seed=0), SegmentCollator)


# ------------------------------------------------------------------------------------------------ end to end


def pretrain_counting_masks(monkeypatch, overrides: list[str]) -> tuple[dict, list[float], dict]:
    """(summary, loss curve, document masks built {"train": n, "eval": n}) of a pretrain() run."""
    import sslnlp.models.modeling
    from sslnlp.training.loop import pretrain

    calls = {"train": 0, "eval": 0}
    build_mask = sslnlp.models.modeling.document_attention_mask

    def counting_mask(documents, **options):
        calls["train" if torch.is_grad_enabled() else "eval"] += 1
        return build_mask(documents, **options)

    monkeypatch.setattr(sslnlp.models.modeling, "document_attention_mask", counting_mask)
    config = load_config(PretrainConfig, None, overrides + ["data.attention_within_documents=true"])
    summary = pretrain(config)
    curve = [r["loss"] for r in map(json.loads, open(f"{config.output_dir}/metrics.jsonl")) if "loss" in r]
    return summary, curve, calls


def test_pretrain_with_attention_within_documents_trains(corpus_file, wordpiece_dir, tmp_path, monkeypatch):
    """The option reaches training and evaluation batches (the model gets document masks) and the loss falls."""
    overrides = tiny_overrides(tmp_path / "run", wordpiece_dir, "mlm", 100, **{"data.train_files": corpus_file})
    summary, curve, calls = pretrain_counting_masks(monkeypatch, overrides)
    assert sum(curve[-5:]) / 5 < 0.85 * sum(curve[:5]) / 5, curve
    assert summary["eval_loss"] < curve[0]
    assert calls["train"] == 100 and calls["eval"] >= 1, calls


@pytest.mark.parametrize("objective", ["clm", "electra"])
def test_pretrain_decoder_and_electra_with_attention_within_documents(objective, corpus_file, wordpiece_dir, bpe_dir,
                                                                     tmp_path, monkeypatch):
    """Next-token prediction (one causal mask per step) and ELECTRA (generator and discriminator: two) train."""
    extra = {"data.train_files": corpus_file}
    if objective == "electra":
        extra.update({"model.model_type": "electra", "objective.name": "electra", "model.config_overrides":
                      "{hidden_size: 32, embedding_size: 16, num_hidden_layers: 2, num_attention_heads: 2, "
                      "intermediate_size: 64, max_position_embeddings: 64}"})
    overrides = tiny_overrides(tmp_path / objective, bpe_dir if objective == "clm" else wordpiece_dir,
                               "clm" if objective == "clm" else "mlm", 20, **extra)
    summary, curve, calls = pretrain_counting_masks(monkeypatch, overrides)
    assert curve[-1] < curve[0] and all(map(torch.isfinite, torch.tensor(curve))), curve
    assert calls["train"] == 20 * (2 if objective == "electra" else 1) and calls["eval"] >= 1, calls
