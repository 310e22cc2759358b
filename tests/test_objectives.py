"""The objective protocol: an objective registered by the test suite trains through pretrain(); the sparse masked-LM
loss equals the dense one for every encoder family; the registry's errors."""

import json

import pytest
import torch
from conftest import tiny_overrides

import objectives_for_tests  # noqa: F401  (registers random_token_detection and mlm_nonfinite)
from sslnlp.config import ConfigError, PretrainConfig, load_config
from sslnlp.data.masking import MaskedLanguageModelingCollator
from sslnlp.models.modeling import SparseMaskedLMHead, build_model, build_model_config, dense_loss
from sslnlp.objectives import get_objective, objective_names
from sslnlp.training.loop import pretrain

ENCODERS = {
    "bert": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 64},
    "roberta": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                "max_position_embeddings": 66, "type_vocab_size": 1},
    "modernbert": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                   "max_position_embeddings": 64, "global_attn_every_n_layers": 1},
    "distilbert": {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64, "max_position_embeddings": 64},
    "electra": {"hidden_size": 32, "embedding_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                "intermediate_size": 64, "max_position_embeddings": 64},
}


def test_an_objective_registered_by_the_tests_trains_and_exports(corpus_file, wordpiece_dir, tmp_path):
    from transformers import AutoModelForTokenClassification

    assert "random_token_detection" in objective_names()
    overrides = tiny_overrides(tmp_path / "run", wordpiece_dir, steps=60, **{"data.train_files": corpus_file})
    config = load_config(PretrainConfig, None, overrides + ["objective.name=random_token_detection",
                                                            "objective.replace_probability=0.3"])
    summary = pretrain(config)
    curve = [r["loss"] for r in map(json.loads, open(tmp_path / "run" / "metrics.jsonl")) if "loss" in r]
    assert sum(curve[-5:]) < 0.9 * sum(curve[:5]), curve
    assert summary["eval_accuracy"] > 0.7  # 30% replaced: always answering "kept" scores 0.7
    model = AutoModelForTokenClassification.from_pretrained(tmp_path / "run")
    assert model.config.num_labels == 2
    assert "objective:\n  name: random_token_detection\n  replace_probability: 0.3" in (tmp_path / "run" / "config.yaml").read_text()


@pytest.mark.parametrize("model_type", sorted(ENCODERS))
def test_sparse_masked_lm_loss_equals_the_dense_loss(model_type, wordpiece_tokenizer, documents):
    from transformers import AutoModelForMaskedLM

    from sslnlp.config import ModelConfig

    options = ModelConfig(model_type=model_type, config_overrides=ENCODERS[model_type], attn_implementation="eager")
    torch.manual_seed(0)
    model = build_model(options, build_model_config(options, wordpiece_tokenizer, 32), AutoModelForMaskedLM).eval()
    collator = MaskedLanguageModelingCollator.from_tokenizer(wordpiece_tokenizer, seed=0, mlm_probability=0.3)
    ids = wordpiece_tokenizer(documents[:6], padding="max_length", truncation=True, max_length=32, return_tensors="pt")
    batch = collator({"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"]})
    with torch.no_grad():
        dense_sum, dense_logits, dense_targets = dense_loss(model, batch)
        head = SparseMaskedLMHead(model)
        sparse_sum, sparse_logits, sparse_targets = head.forward(model, batch)
        head.handle.remove()
    assert len(sparse_targets) == len(dense_targets) > 20
    assert torch.equal(sparse_targets, dense_targets)
    torch.testing.assert_close(sparse_logits, dense_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sparse_sum, dense_sum, rtol=1e-6, atol=1e-5)


def test_registry_errors_name_the_key_and_the_choices():
    with pytest.raises(ConfigError, match=r"objective.name='electr' is not a registered objective; choose one of .*mlm"):
        load_config(PretrainConfig, None, ["objective.name=electr", "max_steps=1"])
    with pytest.raises(ConfigError, match="objective.replace_probability is not an option of objective 'mlm'"):
        load_config(PretrainConfig, None, ["objective.replace_probability=0.2", "max_steps=1"])
    with pytest.raises(ConfigError, match="objective.replace_probability=1.5 must be in"):
        load_config(PretrainConfig, None, ["objective.name=random_token_detection", "objective.replace_probability=1.5",
                                           "max_steps=1"]).check()
    assert get_objective("clm").encoder is False and get_objective("mlm").encoder is True


def test_masked_lm_settings_of_the_objective_section_take_effect(wordpiece_tokenizer):
    """objective.sparse_prediction picks the head; objective.eval_mlm_probability is the held-out masking rate."""
    from transformers import BertConfig

    from sslnlp.config import ModelConfig, PretrainEvaluationConfig
    from sslnlp.objectives import build_objective
    from sslnlp.objectives.mlm import MaskedLanguageModelingConfig

    model_config = BertConfig(vocab_size=len(wordpiece_tokenizer), hidden_size=32, num_hidden_layers=1,
                              num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    for sparse in (True, False):
        objective = build_objective(MaskedLanguageModelingConfig(sparse_prediction=sparse), ModelConfig())
        objective.build_model(model_config)
        assert (objective.sparse_head is not None) == sparse
    objective = build_objective(MaskedLanguageModelingConfig(mlm_probability=0.4, eval_mlm_probability=0.25))
    held_out = objective.build_collator(wordpiece_tokenizer, seed=0, evaluation=PretrainEvaluationConfig())
    training = objective.build_collator(wordpiece_tokenizer, seed=0)
    assert (held_out.mlm_probability, training.mlm_probability) == (0.25, 0.4)
