"""training.torch_compile: a compiled run trains the uncompiled run's losses (within fp32 reordering), exports the
same weights under the same names, and resumes exactly. Whether it pays is measured, not tested:
docs/reports/2026-12-07-compile-on-cpu.md."""

import json
import shutil

import torch
from conftest import tiny_overrides
from safetensors.torch import load_file

from sslnlp.config import PretrainConfig, load_config
from sslnlp.training.loop import pretrain

TOLERANCE = 1e-6  # relative, per step: inductor may fuse and reorder fp32 reductions (measured here: equal)
# Dropout off: inductor draws its random numbers with its own generator, so a compiled run's dropout masks are not the
# eager run's (measured: 6e-4 relative apart at the first step with dropout 0.1).
NO_DROPOUT = ("{hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64, "
              "max_position_embeddings: 64, hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}")


def run(output_dir, tokenizer_dir, corpus_file, **extra):
    return pretrain(load_config(PretrainConfig, None, tiny_overrides(output_dir, tokenizer_dir, steps=6, **{
        "data.train_files": corpus_file, "training.mixed_precision": "no", "training.save_steps": 3,
        "training.save_total_limit": 5, "model.config_overrides": NO_DROPOUT, **extra})))


def losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def test_a_compiled_run_trains_the_uncompiled_losses_and_resumes_exactly(corpus_file, wordpiece_dir, tmp_path):
    run(tmp_path / "eager", wordpiece_dir, corpus_file)
    run(tmp_path / "compiled", wordpiece_dir, corpus_file, **{"training.torch_compile": "true"})
    eager, compiled = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert len(eager) == len(compiled) == 6
    print("largest relative difference of a step's loss", max(abs(a - b) / a for a, b in zip(eager, compiled)))
    assert all(abs(a - b) <= TOLERANCE * a for a, b in zip(eager, compiled)), (eager, compiled)
    # The export is what probes, fine-tunes and the Hub read: a name the Auto classes do not know loads as random.
    eager_weights = load_file(tmp_path / "eager" / "model.safetensors")
    compiled_weights = load_file(tmp_path / "compiled" / "model.safetensors")
    assert sorted(compiled_weights) == sorted(eager_weights)
    assert all(torch.allclose(compiled_weights[name], eager_weights[name], rtol=1e-4, atol=1e-6)
               for name in eager_weights)
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "compiled" / "checkpoints" / "checkpoint-00000003",
                    tmp_path / "resumed" / "checkpoints" / "checkpoint-00000003")
    run(tmp_path / "resumed", wordpiece_dir, corpus_file,
        **{"training.torch_compile": "true", "training.resume_from_checkpoint": "auto"})
    assert (tmp_path / "resumed" / "model.safetensors").read_bytes() == \
        (tmp_path / "compiled" / "model.safetensors").read_bytes()
