"""Replaced-token detection (objective.name=electra): labels, training, exports, resume, other families, launch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ACCELERATE, tiny_overrides

from sslnlp.config import PretrainConfig, load_config
from sslnlp.models.modeling import ModelError
from sslnlp.objectives.electra import replace_tokens, sample_replacements
from sslnlp.training.loop import pretrain

REPO = Path(__file__).resolve().parents[1]
ELECTRA = {"model.model_type": "electra", "model.config_overrides": "{hidden_size: 64, embedding_size: 32, "
           "num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 128, max_position_embeddings: 64}",
           "objective.name": "electra", "objective.mlm_probability": 0.25}


def overrides(corpus_file, tokenizer_dir, output_dir, steps, **extra):
    return tiny_overrides(output_dir, tokenizer_dir, steps=steps, **{"data.train_files": corpus_file, **ELECTRA,
                                                                     "training.mixed_precision": "no", **extra})


def run(corpus_file, tokenizer_dir, output_dir, steps, **extra):
    return pretrain(load_config(PretrainConfig, None, overrides(corpus_file, tokenizer_dir, output_dir, steps, **extra)))


def records(output_dir):
    return [json.loads(line) for line in open(Path(output_dir) / "metrics.jsonl")]


def test_discriminator_labels_are_exactly_sampled_differs_from_original():
    input_ids = torch.tensor([[2, 10, 4, 12, 13, 3], [2, 4, 4, 16, 17, 3]])  # 4 is [MASK]; 13 kept unchanged
    labels = torch.full_like(input_ids, -100)
    labels[0, 2], labels[0, 4], labels[1, 1], labels[1, 2] = 11, 13, 14, 15
    positions = torch.nonzero(labels.reshape(-1) != -100).flatten()
    originals = labels.reshape(-1)[positions]  # [11, 13, 14, 15]
    sampled = torch.tensor([11, 20, 30, 15])  # same, different, different, same
    corrupted, replaced = replace_tokens(input_ids, positions, originals, sampled)
    assert corrupted.tolist() == [[2, 10, 11, 12, 20, 3], [2, 30, 15, 16, 17, 3]]
    expected = torch.zeros_like(replaced)
    expected[0, 4] = expected[1, 1] = True  # only where the sample differs; every other position (masked or not) 0
    assert torch.equal(replaced, expected)
    # sampling follows the generator's distribution: a peaked row gives its argmax, a flat one spreads
    torch.manual_seed(0)
    logits = torch.tensor([[0.0, 30.0, 0.0], [0.0, 0.0, 0.0]]).repeat(2000, 1)
    draws = sample_replacements(logits, temperature=1.0)
    assert (draws[0::2] == 1).all() and 0.25 < (draws[1::2] == 0).float().mean() < 0.42


def test_electra_trains_logs_its_metrics_and_exports(corpus_file, wordpiece_dir, tmp_path):
    from transformers import (AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification,
                              ElectraForPreTraining, pipeline)

    summary = run(corpus_file, wordpiece_dir, tmp_path / "run", 120, **{"training.logging_steps": 10,
                                                                         "training.learning_rate": 2e-3})
    logged = [r for r in records(tmp_path / "run") if "loss" in r]
    first, last = logged[0], logged[-1]
    assert last["generator_loss"] < 0.85 * first["generator_loss"], (first, last)
    assert last["discriminator_loss"] < first["discriminator_loss"]
    assert 0 < last["replaced_fraction"] < 1 and last["discriminator_accuracy"] > 0.8
    assert last["loss"] == pytest.approx(last["generator_loss"] + 50 * last["discriminator_loss"], rel=1e-6)
    for key in ("eval_generator_loss", "eval_discriminator_loss", "eval_generator_accuracy",
                "eval_discriminator_accuracy", "eval_replaced_fraction"):
        assert key in summary, key
    discriminator = ElectraForPreTraining.from_pretrained(tmp_path / "run")
    assert AutoModel.from_pretrained(tmp_path / "run").config.hidden_size == 64
    AutoModelForSequenceClassification.from_pretrained(tmp_path / "run", num_labels=3)
    generator = AutoModelForMaskedLM.from_pretrained(tmp_path / "run" / "generator")
    assert generator.config.hidden_size == 16 and generator.config.embedding_size == 32
    # the generator was trained on the discriminator's (tied) embeddings: both exports hold the same table
    assert torch.equal(generator.electra.embeddings.word_embeddings.weight,
                       discriminator.electra.embeddings.word_embeddings.weight)
    assert len(pipeline("fill-mask", model=str(tmp_path / "run" / "generator"))("The cat sees the red [MASK].")) == 5


def test_resume_reproduces_both_models(corpus_file, wordpiece_dir, tmp_path):
    import shutil

    extra = {"training.save_steps": 5, "training.save_total_limit": 5, "evaluation.eval_steps": 5}
    run(corpus_file, wordpiece_dir, tmp_path / "full", 12, **extra)
    # a run stopped after step 5 (an evaluation drew replacements just before): what the full run had written then
    (tmp_path / "stopped" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "checkpoint-00000005",
                    tmp_path / "stopped" / "checkpoints" / "checkpoint-00000005")
    run(corpus_file, wordpiece_dir, tmp_path / "stopped", 12, **extra, **{"training.resume_from_checkpoint": "auto"})
    for name in ("model.safetensors", "generator/model.safetensors"):
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "stopped" / name).read_bytes(), name
    assert [r["loss"] for r in records(tmp_path / "full") if "loss" in r][5:] == \
        [r["loss"] for r in records(tmp_path / "stopped") if "loss" in r]


def test_modernbert_generator_keeps_the_width_and_a_narrow_one_is_refused(corpus_file, wordpiece_dir, tmp_path):
    modernbert = {"model.model_type": "modernbert", "model.config_overrides": "{hidden_size: 64, num_hidden_layers: 2, "
                  "num_attention_heads: 2, intermediate_size: 96, max_position_embeddings: 64, "
                  "global_attn_every_n_layers: 1}"}
    summary = run(corpus_file, wordpiece_dir, tmp_path / "mb", 20, **modernbert, **{
        "objective.generator_size": 1.0, "objective.generator_layers": 0.5, "objective.masking": "whole_word",
        "training.gradient_accumulation_steps": 2, "training.mixed_precision": "bf16"})
    assert summary["steps"] == 20 and summary["mixed_precision"] == "bf16"
    from transformers import AutoModelForMaskedLM, AutoModelForTokenClassification

    assert AutoModelForMaskedLM.from_pretrained(tmp_path / "mb" / "generator").config.num_hidden_layers == 1
    assert AutoModelForTokenClassification.from_pretrained(tmp_path / "mb").config.num_labels == 1
    with pytest.raises(ModelError, match="cannot be tied .* keep the width"):
        run(corpus_file, wordpiece_dir, tmp_path / "narrow", 2, **modernbert)


def test_two_process_launch_trains(corpus_file, wordpiece_dir, tmp_path):
    arguments = overrides(corpus_file, wordpiece_dir, tmp_path / "two", 10, **{"training.per_device_train_batch_size": 4})
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "ACCELERATE_USE_CPU": "1"}
    result = subprocess.run([ACCELERATE, "launch", "--config_file", str(REPO / "recipes/accelerate/cpu-2proc.yaml"),
                             "--multi_gpu", "-m", "sslnlp", "pretrain", *arguments], cwd=REPO, env=environment,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["tokens"] == 10 * 8 * 32
    assert (tmp_path / "two" / "generator" / "model.safetensors").is_file()


def test_time_budget_probe_on_the_discriminator_and_model_card(corpus_file, wordpiece_dir, tmp_path):
    from test_evaluate import labelled_sets

    from sslnlp.publishing.card import write_model_card

    task = labelled_sets(tmp_path)["order"]
    summary = run(corpus_file, wordpiece_dir, tmp_path / "run", 0, **{
        "training.max_steps": 0, "training.max_time": 4, "training.logging_steps": 5,
        "evaluation.probe_task": json.dumps({"train_file": task.train_file})})
    assert summary["train_runtime"] >= 4 and summary["steps"] > 5
    probe = [r for r in records(tmp_path / "run") if "probe_accuracy" in r]
    assert len(probe) == 1 and 0 <= probe[0]["probe_accuracy"] <= 1
    card = write_model_card(tmp_path / "run", repo_id="me/tiny-electra")
    assert "pipeline_tag: feature-extraction" in card and "electra-objective" in card
    assert "replaced-token detection (ELECTRA)" in card and 'subfolder="generator"' in card
    assert "50 x discriminator" in card
