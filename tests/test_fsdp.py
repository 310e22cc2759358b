"""Launch tier: FSDP2 with 2 CPU processes (recipes/accelerate/fsdp-cpu-2proc.yaml, gloo) trains, writes a sharded
checkpoint, resumes exactly and exports an ordinary Hugging Face model: the rehearsal of recipes/accelerate/fsdp-8gpu.yaml."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import ACCELERATE, tiny_overrides

REPO = Path(__file__).resolve().parents[1]
FSDP_CONFIG = REPO / "recipes" / "accelerate" / "fsdp-cpu-2proc.yaml"
DDP_CONFIG = REPO / "recipes" / "accelerate" / "cpu-2proc.yaml"
STEPS = 20


def launch(config: Path, overrides: list[str], check: bool = True) -> subprocess.CompletedProcess:
    # fsdp-cpu-2proc.yaml is launched without --multi_gpu (it would drop the FSDP variables); cpu-2proc.yaml needs it
    extra = ["--multi_gpu"] if config == DDP_CONFIG else []
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "ACCELERATE_USE_CPU": "1"}
    result = subprocess.run([ACCELERATE, "launch", "--config_file", str(config), *extra, "--main_process_port", "0",
                             "-m", "sslnlp", "pretrain", *overrides],
                            cwd=REPO, env=environment, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def overrides(output_dir, corpus_file, wordpiece_dir, steps=STEPS, **extra):
    # fp32: FSDP's mixed-precision policy and DDP's autocast round differently, so bf16 runs would not compare
    return tiny_overrides(output_dir, wordpiece_dir, steps=steps, **{"data.train_files": corpus_file,
                                                                     "training.save_steps": 10,
                                                                     "training.mixed_precision": "no", **extra})


@pytest.fixture(scope="module")
def runs(corpus_file, wordpiece_dir, tmp_path_factory):
    """An FSDP run to step 20, one resumed from its step-10 checkpoint, and the DDP run of the same steps."""
    root = tmp_path_factory.mktemp("fsdp")
    launch(FSDP_CONFIG, overrides(root / "fsdp", corpus_file, wordpiece_dir))
    (root / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(root / "fsdp" / "checkpoints" / "checkpoint-00000010",
                    root / "resumed" / "checkpoints" / "checkpoint-00000010")
    launch(FSDP_CONFIG, overrides(root / "resumed", corpus_file, wordpiece_dir,
                                  **{"training.resume_from_checkpoint": "auto"}))
    launch(DDP_CONFIG, overrides(root / "ddp", corpus_file, wordpiece_dir))
    return root


def test_fsdp_trains_on_two_processes_and_writes_a_sharded_checkpoint(runs):
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    summary = json.loads((runs / "fsdp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == STEPS
    checkpoint = runs / "fsdp" / "checkpoints" / f"checkpoint-{STEPS:08d}"
    for part in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert sorted(p.name for p in (checkpoint / part).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not list(checkpoint.glob("*.safetensors")) and not list(checkpoint.glob("*.bin"))
    # each rank wrote its half of every weight matrix: a DTensor sharded over 2 ranks
    metadata = FileSystemReader(str(checkpoint / "pytorch_model_fsdp_0")).read_metadata().state_dict_metadata
    embedding = next(v for k, v in metadata.items() if k.endswith("word_embeddings.weight"))
    assert isinstance(embedding, TensorStorageMetadata) and len(embedding.chunks) == 2
    assert sum(chunk.sizes[0] for chunk in embedding.chunks) == embedding.size[0]
    layer_weights = [v for k, v in metadata.items() if ".layer." in k and k.endswith("weight")]
    assert layer_weights and all(len(v.chunks) == 2 for v in layer_weights if v.size[0] >= 2)


def test_a_resumed_fsdp_run_exports_the_uninterrupted_model_byte_for_byte(runs):
    assert json.loads((runs / "resumed" / "summary.json").read_text())["steps"] == STEPS
    assert (runs / "fsdp" / "model.safetensors").read_bytes() == (runs / "resumed" / "model.safetensors").read_bytes()


def test_the_export_is_an_ordinary_model_with_the_weights_data_parallel_trains(runs):
    from safetensors.torch import load_file
    from transformers import AutoModelForMaskedLM

    model, info = AutoModelForMaskedLM.from_pretrained(runs / "fsdp", output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[2, 10, 11, 12, 3]])).logits
    assert torch.isfinite(logits).all()
    fsdp, ddp = load_file(runs / "fsdp" / "model.safetensors"), load_file(runs / "ddp" / "model.safetensors")
    assert sorted(fsdp) == sorted(ddp)
    for name in fsdp:  # the same 20 steps on the same data: FSDP gathers what DDP trains
        torch.testing.assert_close(fsdp[name], ddp[name], rtol=1e-4, atol=1e-5, msg=name)


def test_a_checkpoint_of_another_engine_is_refused_in_one_line(runs, corpus_file, wordpiece_dir, tmp_path):
    """A DDP checkpoint resumed under FSDP, and an FSDP one under DDP: refused before anything is loaded."""
    for written, resumed_with, expected in (("ddp", FSDP_CONFIG, "was written by data parallel but this run is FSDP "
                                                                 "(sharded)"),
                                            ("fsdp", DDP_CONFIG, "was written by FSDP (sharded) but this run is data "
                                                                 "parallel")):
        output_dir = tmp_path / f"from-{written}"
        (output_dir / "checkpoints").mkdir(parents=True)
        shutil.copytree(runs / written / "checkpoints" / "checkpoint-00000010",
                        output_dir / "checkpoints" / "checkpoint-00000010")
        result = launch(resumed_with, overrides(output_dir, corpus_file, wordpiece_dir,
                                                **{"training.resume_from_checkpoint": "auto"}), check=False)
        assert result.returncode != 0
        errors = [line for line in result.stderr.splitlines() if line.startswith("sslnlp: error:")]
        assert errors and all(expected in line for line in errors), result.stderr[-3000:]
        assert not (output_dir / "model.safetensors").exists()


def test_electra_is_refused_under_fsdp_before_training(corpus_file, wordpiece_dir, tmp_path):
    result = launch(FSDP_CONFIG, overrides(tmp_path / "electra", corpus_file, wordpiece_dir, steps=2,
                                           **{"objective.name": "electra", "objective.generator_size": 1.0,
                                              "objective.generator_layers": 0.5}), check=False)
    assert result.returncode != 0
    assert "sslnlp: error: FSDP cannot shard GeneratorAndDiscriminator" in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "electra" / "checkpoints").exists()


@pytest.mark.parametrize("model_type", ["bert", "roberta", "modernbert", "gpt2", "llama"])
def test_the_transformer_layers_and_only_they_are_found(model_type):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    from sslnlp.training.engines import shared_submodule, transformer_layers

    expected = {"bert": "BertLayer", "roberta": "RobertaLayer", "modernbert": "ModernBertEncoderLayer",
                "gpt2": "GPT2Block", "llama": "LlamaDecoderLayer"}[model_type]
    if model_type == "gpt2":
        values = {"n_embd": 32, "n_layer": 3, "n_head": 2, "vocab_size": 100}
    else:
        values = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64,
                  "vocab_size": 100, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "cls_token_id": 1,
                  "sep_token_id": 2}
    auto = AutoModelForCausalLM if model_type in ("gpt2", "llama") else AutoModelForMaskedLM
    model = auto.from_config(AutoConfig.for_model(model_type, **values))
    layers = transformer_layers(model)
    assert [type(layer).__name__ for layer in layers] == [expected] * 3
    assert shared_submodule(model) is None  # tied weights are parameters, not shared modules
