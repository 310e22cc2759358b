"""Integration: pretrain() on a tiny model for a few dozen steps, both objectives; resume; export; bad configs."""

import json
import shutil

import pytest
import torch
from conftest import tiny_overrides

from sslnlp.config import ConfigError, PretrainConfig, load_config
from sslnlp.models.modeling import ModelError
from sslnlp.training.loop import pretrain


def losses(output_dir):
    return [r["loss"] for r in map(json.loads, open(f"{output_dir}/metrics.jsonl")) if "loss" in r]


def run(corpus_file, output_dir, tokenizer_dir, objective="mlm", steps=30, **extra):
    config = load_config(PretrainConfig, None, tiny_overrides(output_dir, tokenizer_dir, objective, steps,
                                                              **{"data.train_files": corpus_file, **extra}))
    return pretrain(config)


def test_mlm_loss_falls_weights_change_and_export_runs_in_pipeline(corpus_file, wordpiece_dir, tmp_path):
    from transformers import AutoModelForMaskedLM, pipeline
    from transformers import BertConfig, BertForMaskedLM

    summary = run(corpus_file, tmp_path / "mlm", wordpiece_dir, steps=100)
    curve = losses(tmp_path / "mlm")
    assert len(curve) == 100
    assert sum(curve[-5:]) / 5 < 0.85 * sum(curve[:5]) / 5, curve
    assert summary["eval_accuracy"] > 0.1 and summary["eval_loss"] < curve[0]
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "mlm")
    torch.manual_seed(42)  # the run's seed: the same random init, so the weights must have moved from it
    initial = BertForMaskedLM(BertConfig.from_pretrained(tmp_path / "mlm"))
    assert not torch.allclose(initial.bert.encoder.layer[0].attention.self.query.weight, model.bert.encoder.layer[0].attention.self.query.weight)
    fill = pipeline("fill-mask", model=str(tmp_path / "mlm"))
    predictions = fill("The cat sees the red [MASK].")
    assert len(predictions) == 5 and all("sequence" in p for p in predictions)
    assert (tmp_path / "mlm" / "model.safetensors").is_file()


def test_clm_loss_falls_and_generates(corpus_file, bpe_dir, tmp_path):
    from transformers import AutoModelForCausalLM, pipeline

    summary = run(corpus_file, tmp_path / "clm", bpe_dir, objective="clm", steps=100)
    curve = losses(tmp_path / "clm")
    assert sum(curve[-5:]) / 5 < 0.85 * sum(curve[:5]) / 5, curve
    assert summary["eval_loss"] < curve[0]
    AutoModelForCausalLM.from_pretrained(tmp_path / "clm")
    generate = pipeline("text-generation", model=str(tmp_path / "clm"))
    out = generate("The cat", max_new_tokens=5, do_sample=False)
    assert out[0]["generated_text"].startswith("The cat")


@pytest.mark.parametrize("objective,masking", [("mlm", "whole_word"), ("mlm", "span")])
def test_masking_variants_train(corpus_file, wordpiece_dir, tmp_path, objective, masking):
    run(corpus_file, tmp_path / masking, wordpiece_dir, steps=15, **{"objective.masking": masking})
    curve = losses(tmp_path / masking)
    assert curve[-1] < curve[0]


@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_resume_reproduces_the_uninterrupted_run(corpus_file, wordpiece_dir, bpe_dir, tmp_path, objective):
    tokenizer = wordpiece_dir if objective == "mlm" else bpe_dir
    extra = {"training.save_steps": 8, "training.save_total_limit": 5, "training.gradient_accumulation_steps": 2,
             "evaluation.eval_steps": 8}
    run(corpus_file, tmp_path / "full", tokenizer, objective, steps=20, **extra)
    full = losses(tmp_path / "full")
    # a run stopped after step 8: its directory holds what the uninterrupted run had written by then
    (tmp_path / "stopped" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "checkpoint-00000008", tmp_path / "stopped" / "checkpoints" / "checkpoint-00000008")
    run(corpus_file, tmp_path / "stopped", tokenizer, objective, steps=20, **extra, **{"training.resume_from_checkpoint": "auto"})
    resumed = losses(tmp_path / "stopped")
    assert resumed == full[8:]  # identical, step for step, on CPU
    full_model = open(tmp_path / "full" / "model.safetensors", "rb").read()
    assert open(tmp_path / "stopped" / "model.safetensors", "rb").read() == full_model


def test_checkpoints_are_complete_and_pruned(corpus_file, wordpiece_dir, tmp_path):
    from sslnlp.files import find_latest_checkpoint, list_checkpoints

    run(corpus_file, tmp_path / "ck", wordpiece_dir, steps=12, **{"training.save_steps": 3, "training.save_total_limit": 2})
    assert [step for step, _ in list_checkpoints(tmp_path / "ck")] == [9, 12]
    assert find_latest_checkpoint(tmp_path / "ck").name == "checkpoint-00000012"
    # a half-written checkpoint (no loop_state.json) is never picked
    partial = tmp_path / "ck" / "checkpoints" / "checkpoint-00000099"
    shutil.copytree(tmp_path / "ck" / "checkpoints" / "checkpoint-00000012", partial)
    (partial / "loop_state.json").unlink()
    assert find_latest_checkpoint(tmp_path / "ck").name == "checkpoint-00000012"


def test_token_and_time_budgets(corpus_file, wordpiece_dir, tmp_path):
    summary = run(corpus_file, tmp_path / "tokens", wordpiece_dir, steps=0, **{"training.max_tokens": 8 * 32 * 5})
    assert summary["steps"] == 5 and summary["tokens"] == 8 * 32 * 5
    summary = run(corpus_file, tmp_path / "time", wordpiece_dir, steps=0, **{"training.max_time": 2.0})
    step_seconds = summary["train_runtime"] / summary["steps"]
    assert 2.0 <= summary["train_runtime"] < 2.0 + step_seconds + 0.5  # stops at the first step past the budget


def test_bad_configs_are_rejected_before_work(tmp_path, wordpiece_dir, corpus_file):
    with pytest.raises(ConfigError, match="unknown config key 'training.learnig_rate'; did you mean 'training.learning_rate'"):
        load_config(PretrainConfig, None, ["training.learnig_rate=1e-3"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("trainig:\n  max_steps: 3\n")
    with pytest.raises(ConfigError, match="r.yaml: unknown config key 'trainig'; did you mean 'training'"):
        load_config(PretrainConfig, recipe)
    with pytest.raises(ConfigError, match="training.max_steps='ten' is not a valid int"):
        load_config(PretrainConfig, None, ["training.max_steps=ten"])
    with pytest.raises(ConfigError, match="no training budget"):
        load_config(PretrainConfig, None, ["training.max_steps=0"]).check()
    with pytest.raises(ConfigError, match="objective.masking is not an option of objective 'clm'"):
        load_config(PretrainConfig, None, ["objective.name=clm", "objective.masking=whole_word", "max_steps=1"]).check()
    with pytest.raises(ConfigError, match="objective.masking='words' is not valid; choose one of token, whole_word, span"):
        load_config(PretrainConfig, None, ["objective.masking=words", "max_steps=1"]).check()
    with pytest.raises(ModelError, match="model type 'gpt2' has no masked-LM"):
        run(corpus_file, tmp_path / "x", wordpiece_dir, **{"model.model_type": "gpt2", "model.config_overrides": "{}"})
    with pytest.raises(ModelError, match="data.max_seq_length=128 exceeds the model's 64 positions"):
        run(corpus_file, tmp_path / "y", wordpiece_dir, **{"data.max_seq_length": 128})
    with pytest.raises(ValueError, match="is not a complete checkpoint"):
        run(corpus_file, tmp_path / "z", wordpiece_dir, **{"training.resume_from_checkpoint": str(tmp_path)})


ARCHITECTURES = {
    "roberta": ("mlm", "{hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64, "
                       "max_position_embeddings: 66, type_vocab_size: 1}"),
    "modernbert": ("mlm", "{hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64, "
                          "max_position_embeddings: 64, global_attn_every_n_layers: 1}"),
    "distilbert": ("mlm", "{dim: 32, n_layers: 2, n_heads: 2, hidden_dim: 64, max_position_embeddings: 64}"),
    "llama": ("clm", "{hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, num_key_value_heads: 1, "
                     "intermediate_size: 64, max_position_embeddings: 64}"),
}


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_other_architectures_train_and_export(corpus_file, wordpiece_dir, bpe_dir, tmp_path, model_type):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    objective, overrides = ARCHITECTURES[model_type]
    tokenizer = wordpiece_dir if objective == "mlm" else bpe_dir
    run(corpus_file, tmp_path / model_type, tokenizer, objective, steps=30,
        **{"model.model_type": model_type, "model.config_overrides": overrides})
    curve = losses(tmp_path / model_type)
    assert sum(curve[-5:]) < sum(curve[:5]), curve
    auto = AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM
    assert auto.from_pretrained(tmp_path / model_type).config.model_type == model_type


def test_learning_rate_schedules():
    from sslnlp.runtime import learning_rate_multiplier as multiplier

    for schedule in ("linear", "cosine", "constant", "wsd"):
        assert multiplier(0.05, schedule, warmup=0.1, decay_ratio=0.2, min_ratio=0.0) == pytest.approx(0.5)  # warmup
        assert multiplier(0.1, schedule, warmup=0.1, decay_ratio=0.2, min_ratio=0.0) == pytest.approx(1.0)   # peak
    assert multiplier(1.0, "linear", 0.1, 0.2, 0.0) == pytest.approx(0.0)
    assert multiplier(0.55, "linear", 0.1, 0.2, 0.0) == pytest.approx(0.5)
    assert multiplier(0.55, "cosine", 0.1, 0.2, 0.1) == pytest.approx(0.55)
    assert multiplier(0.7, "wsd", 0.1, 0.2, 0.0) == pytest.approx(1.0)   # stable until the last 20%
    assert multiplier(0.9, "wsd", 0.1, 0.2, 0.0) == pytest.approx(0.5)   # halfway through the decay
    assert multiplier(1.0, "cosine", 0.1, 0.2, 0.1) == pytest.approx(0.1)


def test_no_weight_decay_on_biases_and_norms():
    from transformers import BertConfig, BertForMaskedLM

    from sslnlp.runtime import parameter_groups

    model = BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64))
    decay, no_decay = parameter_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim == 2 for p in decay["params"])
    assert all(n.endswith("bias") or "LayerNorm" in n for n in (names[id(p)] for p in no_decay["params"]))
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.01


def test_old_masking_section_still_loads_and_says_what_to_rename(tmp_path, caplog):
    recipe = tmp_path / "old.yaml"
    recipe.write_text("masking:\n  objective: mlm\n  mlm_probability: 0.4\n  masking: whole_word\ntraining:\n  max_steps: 5\n")
    with caplog.at_level("WARNING"):
        config = load_config(PretrainConfig, recipe)
    assert (config.objective.name, config.objective.mlm_probability, config.objective.masking) == ("mlm", 0.4, "whole_word")
    assert "rename masking.objective -> objective.name" in caplog.text and "masking.masking -> objective.masking" in caplog.text
    # an old next-token recipe: its objective moves, the MLM-only defaults it carried are dropped
    config = load_config(PretrainConfig, None, ["masking.objective=clm", "masking.mlm_probability=0.15", "max_steps=1"])
    assert config.objective.name == "clm" and not hasattr(config.objective, "mlm_probability")


def test_masked_lm_settings_moved_out_of_the_general_sections_still_load(tmp_path, caplog):
    recipe = tmp_path / "old.yaml"
    recipe.write_text("model:\n  sparse_prediction: false\nevaluation:\n  eval_mlm_probability: 0.3\n")
    with caplog.at_level("WARNING"):
        config = load_config(PretrainConfig, recipe)
    assert (config.objective.sparse_prediction, config.objective.eval_mlm_probability) == (False, 0.3)
    assert "model.sparse_prediction -> objective.sparse_prediction" in caplog.text
    assert "evaluation.eval_mlm_probability -> objective.eval_mlm_probability" in caplog.text
    config = load_config(PretrainConfig, None, ["model.sparse_prediction=false", "evaluation.eval_mlm_probability=0.2"])
    assert (config.objective.sparse_prediction, config.objective.eval_mlm_probability) == (False, 0.2)
    # a next-token run never had these settings: dropped, not an error
    config = load_config(PretrainConfig, recipe, ["objective.name=clm"])
    assert config.objective.name == "clm" and not hasattr(config.objective, "sparse_prediction")


def test_old_config_class_names_still_work_with_a_warning():
    import sslnlp

    for old, new in (("ProbeConfig", "EvaluateConfig"), ("FinetuneConfig", "EvaluateConfig"),
                     ("EvaluationConfig", "PretrainEvaluationConfig")):
        with pytest.warns(FutureWarning, match=f"{old} is now {new}"):
            assert getattr(sslnlp, old) is getattr(sslnlp, new)
