"""Weight averaging (training.ema_decay): the average follows the rule, step by step, from the raw weights that each
checkpoint holds; it is what evaluation and the export see while training itself is unaffected; it resumes byte for
byte; DDP and FSDP (2 CPU processes through the real `accelerate launch`) average what one process would."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import ACCELERATE, tiny_overrides
from objectives_for_tests import NonFiniteMaskedLanguageModeling
from safetensors.torch import load_file

from sslnlp.config import ConfigError, PretrainConfig, load_config
from sslnlp.training.loop import pretrain

REPO = Path(__file__).resolve().parents[1]
DDP_CONFIG = REPO / "recipes" / "accelerate" / "cpu-2proc.yaml"
FSDP_CONFIG = REPO / "recipes" / "accelerate" / "fsdp-cpu-2proc.yaml"
DECAY = 0.9
STEPS = 4


def run(output_dir, corpus_file, tokenizer_dir, steps=STEPS, **extra) -> dict:
    overrides = tiny_overrides(output_dir, tokenizer_dir, steps=steps, **{"data.train_files": corpus_file, **extra})
    return pretrain(load_config(PretrainConfig, None, overrides))


def launch(config, output_dir, corpus_file, tokenizer_dir, **extra) -> dict:
    """A 2-process run through `accelerate launch` (fsdp-cpu-2proc.yaml goes without --multi_gpu: test_fsdp.py)."""
    overrides = tiny_overrides(output_dir, tokenizer_dir, steps=STEPS, **{"data.train_files": corpus_file, **extra})
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "ACCELERATE_USE_CPU": "1"}
    result = subprocess.run([ACCELERATE, "launch", "--config_file", str(config),
                             *(["--multi_gpu"] if config == DDP_CONFIG else []), "--main_process_port", "0",
                             "-m", "sslnlp", "pretrain", *overrides],
                            cwd=REPO, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((output_dir / "summary.json").read_text())


def raw_weights(output_dir, step) -> dict:
    """The training weights after ``step``, as that step's checkpoint holds them."""
    return load_file(output_dir / "checkpoints" / f"checkpoint-{step:08d}" / "model.safetensors")


def by_hand(start: dict, steps: list[dict], copy_steps: int = 0) -> dict:
    """average_0 = the initial weights; the first ``copy_steps`` steps copy, the others average (in float64)."""
    average = {name: value.double() for name, value in start.items()}
    for index, weights in enumerate(steps):
        for name in average:
            weight = weights[name].double()
            average[name] = weight if index < copy_steps else DECAY * average[name] + (1 - DECAY) * weight
    return average


def assert_weights_close(exported: dict, expected: dict, atol=1e-6):
    assert sorted(exported) == sorted(expected)
    for name in expected:
        torch.testing.assert_close(exported[name].double(), expected[name], rtol=0, atol=atol, msg=name)


def losses(output_dir) -> list[float]:
    return [r["loss"] for r in map(json.loads, open(output_dir / "metrics.jsonl")) if "loss" in r]


@pytest.fixture(scope="module")
def start(corpus_file, wordpiece_dir, tmp_path_factory):
    """A 2-step model to continue from, so that every run's initial weights (average_0) are a file."""
    output_dir = tmp_path_factory.mktemp("ema") / "start"
    run(output_dir, corpus_file, wordpiece_dir, steps=2)
    return output_dir


@pytest.fixture(scope="module")
def runs(start, corpus_file, wordpiece_dir):
    """From ``start``, 4 steps each, evaluated and saved after every step: averaged from the start, averaged from
    half the budget (ema_start), and not averaged."""
    root = start.parent
    common = {"model.model_name_or_path": start, "training.save_steps": 1, "training.save_total_limit": 10,
              "evaluation.eval_steps": 1}
    summaries = {
        "averaged": run(root / "averaged", corpus_file, wordpiece_dir, **common, **{"training.ema_decay": DECAY}),
        "late": run(root / "late", corpus_file, wordpiece_dir, **common,
                    **{"training.ema_decay": DECAY, "training.ema_start": 0.5}),
        "plain": run(root / "plain", corpus_file, wordpiece_dir, **common),
    }
    return root, summaries


def test_the_exported_average_equals_the_hand_computation_from_each_steps_weights(runs):
    root, _ = runs
    steps = [raw_weights(root / "averaged", step) for step in range(1, STEPS + 1)]
    start = load_file(root / "start" / "model.safetensors")
    assert_weights_close(load_file(root / "averaged" / "model.safetensors"), by_hand(start, steps))
    # ema_start=0.5 of 4 steps: steps 1 and 2 start before it and copy; 3 and 4 average
    assert_weights_close(load_file(root / "late" / "model.safetensors"), by_hand(start, steps, copy_steps=2))


def test_a_skipped_nonfinite_step_leaves_the_average_as_it_was(start, corpus_file, wordpiece_dir):
    output_dir = start.parent / "nonfinite"
    summary = run(output_dir, corpus_file, wordpiece_dir, **{"model.model_name_or_path": start,
                                                             "objective.name": NonFiniteMaskedLanguageModeling.name,
                                                             "objective.nonfinite_steps": "[3]",
                                                             "training.ema_decay": DECAY, "training.save_steps": 1,
                                                             "training.save_total_limit": 10})
    assert summary["nonfinite_steps"] == 1
    steps = [raw_weights(output_dir, step) for step in range(1, STEPS + 1)]
    assert all(torch.equal(steps[1][name], steps[2][name]) for name in steps[1])  # step 3 changed nothing
    expected = by_hand(load_file(start / "model.safetensors"), [steps[0], steps[1], steps[3]])
    assert_weights_close(load_file(output_dir / "model.safetensors"), expected)


def test_the_export_holds_the_average_and_training_is_unaffected(runs):
    from transformers import AutoModelForMaskedLM

    from sslnlp.publishing.card import write_model_card
    from sslnlp.publishing.report import read_run, summary_rows

    root, summaries = runs
    exported = load_file(root / "averaged" / "model.safetensors")
    trained = raw_weights(root / "averaged", STEPS)
    assert max((exported[name] - trained[name]).abs().max().item() for name in exported) > 1e-4
    # the averaged weights were swapped in for 4 evaluations (and out again): the training weights, the losses and
    # the held-out loss of the training weights are those of the run without averaging, exactly
    plain = load_file(root / "plain" / "model.safetensors")
    assert sorted(plain) == sorted(trained) and all(torch.equal(plain[name], trained[name]) for name in plain)
    assert losses(root / "averaged") == losses(root / "plain")
    averaged, without = summaries["averaged"], summaries["plain"]
    assert averaged["raw_eval_loss"] == without["eval_loss"] and averaged["eval_loss"] != without["eval_loss"]
    assert averaged["ema_decay"] == DECAY and without["ema_decay"] is None and "raw_eval_loss" not in without
    assert json.loads((root / "averaged" / "summary.json").read_text())["eval_loss"] == averaged["eval_loss"]
    model = AutoModelForMaskedLM.from_pretrained(root / "averaged")  # what probe, finetune and the Hub push read
    torch.testing.assert_close(model.bert.embeddings.word_embeddings.weight,
                               exported["bert.embeddings.word_embeddings.weight"], rtol=0, atol=0)
    # the run report's table and the model card say so
    assert summary_rows([read_run(root / "averaged")])[0]["EMA decay"] == DECAY
    card = write_model_card(root / "averaged", repo_id="someone/tiny-ema")
    assert f"| weight averaging | exponential moving average, decay {DECAY}: the weights published here" in card


def test_electra_averages_both_models_it_trains_and_exports_both_averaged(corpus_file, wordpiece_dir, tmp_path):
    run(tmp_path, corpus_file, wordpiece_dir, **{"objective.name": "electra", "objective.generator_size": 1.0,
                                                 "objective.generator_layers": 0.5, "training.ema_decay": DECAY,
                                                 "training.ema_start": 0.5, "training.save_steps": 1,
                                                 "training.save_total_limit": 10})
    steps = [raw_weights(tmp_path, step) for step in range(1, STEPS + 1)]  # the pair's weights: generator.*, ...
    average = by_hand(steps[0], steps, copy_steps=2)
    for model, folder in (("discriminator", tmp_path), ("generator", tmp_path / "generator")):
        exported = load_file(folder / "model.safetensors")
        # the shared embeddings are saved once, under the generator's names
        expected = {name: average.get(f"{model}.{name}", average.get(f"generator.{name}")) for name in exported}
        assert_weights_close(exported, expected)


def test_a_resumed_run_exports_the_uninterrupted_average_byte_for_byte(corpus_file, wordpiece_dir, tmp_path):
    extra = {"training.ema_decay": DECAY, "training.save_steps": 3, "training.save_total_limit": 5,
             "evaluation.eval_steps": 3}
    full = run(tmp_path / "full", corpus_file, wordpiece_dir, steps=6, **extra)
    (tmp_path / "stopped" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "checkpoint-00000003",
                    tmp_path / "stopped" / "checkpoints" / "checkpoint-00000003")
    resumed = run(tmp_path / "stopped", corpus_file, wordpiece_dir, steps=6, **extra,
                  **{"training.resume_from_checkpoint": "auto"})
    for name in ("model.safetensors", "checkpoints/checkpoint-00000006/weight_average.safetensors"):
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "stopped" / name).read_bytes(), name
    assert resumed["eval_loss"] == full["eval_loss"] and resumed["raw_eval_loss"] == full["raw_eval_loss"]


@pytest.mark.parametrize("key,value", [("training.ema_decay", "1.5"), ("training.ema_decay", "0"),
                                       ("training.ema_start", "1")])
def test_an_out_of_range_setting_fails_in_one_line_naming_its_key(key, value):
    with pytest.raises(ConfigError) as error:
        load_config(PretrainConfig, None, [f"{key}={value}"])
    assert str(error.value).startswith(f"{key}={float(value)!r} is out of range") and "\n" not in str(error.value)
    config = load_config(PretrainConfig, None, ["training.max_steps=1"])
    setattr(config.training, key.split(".")[1], float(value))  # set after loading: pretrain's check still refuses
    with pytest.raises(ConfigError, match=f"^{key}="):
        pretrain(config)


@pytest.fixture(scope="module")
def launched(start, corpus_file, wordpiece_dir):
    """2-process runs from ``start`` with averaging: DDP saving every step; FSDP saving at step 2, and resumed from
    there. fp32: FSDP's mixed-precision policy and DDP's autocast round differently (test_fsdp.py)."""
    root = start.parent
    common = {"model.model_name_or_path": start, "training.ema_decay": DECAY, "training.mixed_precision": "no",
              "evaluation.eval_steps": 1, "training.save_total_limit": 10}
    summaries = {"ddp": launch(DDP_CONFIG, root / "ddp", corpus_file, wordpiece_dir, **common,
                               **{"training.save_steps": 1}),
                 "fsdp": launch(FSDP_CONFIG, root / "fsdp", corpus_file, wordpiece_dir, **common,
                                **{"training.save_steps": 2})}
    (root / "fsdp-resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(root / "fsdp" / "checkpoints" / "checkpoint-00000002",
                    root / "fsdp-resumed" / "checkpoints" / "checkpoint-00000002")
    summaries["fsdp-resumed"] = launch(FSDP_CONFIG, root / "fsdp-resumed", corpus_file, wordpiece_dir, **common,
                                       **{"training.save_steps": 2, "training.resume_from_checkpoint": "auto"})
    return root, summaries


def test_ddp_exports_the_hand_computed_average(launched):
    root, summaries = launched
    assert summaries["ddp"]["world_size"] == 2 and summaries["ddp"]["ema_decay"] == DECAY
    steps = [raw_weights(root / "ddp", step) for step in range(1, STEPS + 1)]
    expected = by_hand(load_file(root / "start" / "model.safetensors"), steps)
    assert_weights_close(load_file(root / "ddp" / "model.safetensors"), expected)


def test_fsdp_averages_its_shards_gathers_them_in_the_export_and_resumes_exactly(launched):
    root, summaries = launched
    checkpoint = root / "fsdp" / "checkpoints" / f"checkpoint-{STEPS:08d}"
    shards = [load_file(checkpoint / f"weight_average_rank_{rank}.safetensors") for rank in (0, 1)]
    embedding = "bert.embeddings.word_embeddings.weight"
    exported = load_file(root / "fsdp" / "model.safetensors")
    # each rank kept its half of the rows; the export is the two halves gathered
    assert shards[0][embedding].shape[0] + shards[1][embedding].shape[0] == exported[embedding].shape[0]
    torch.testing.assert_close(torch.cat([shards[0][embedding], shards[1][embedding]]), exported[embedding],
                               rtol=0, atol=0)
    # the same steps on the same data as DDP, whose average matches the hand computation: FSDP averages the same
    ddp = load_file(root / "ddp" / "model.safetensors")
    assert sorted(exported) == sorted(ddp)
    for name in exported:
        torch.testing.assert_close(exported[name], ddp[name], rtol=1e-4, atol=1e-5, msg=name)
    assert losses(root / "fsdp") == pytest.approx(losses(root / "ddp"), rel=1e-5)
    # each rank evaluates its half of the held-out batches with its own average: rank 1's DDP average (never
    # written) agrees with the sharded one too
    assert summaries["fsdp"]["eval_loss"] == pytest.approx(summaries["ddp"]["eval_loss"], rel=1e-5)
    resumed = root / "fsdp-resumed" / "model.safetensors"
    assert (root / "fsdp" / "model.safetensors").read_bytes() == resumed.read_bytes()
