"""Record the golden per-step losses of the tiny MLM and CLM runs (tests/test_golden.py checks them).

    python tests/golden/record_losses.py        # rewrites tests/golden/losses.json; only when a change is meant to

The tokenizers are stored next to this file so that the recorded runs do not depend on tokenizer training, and the
corpus is the tests' own seeded synthetic text. CPU, fp32, one thread, seed 42: the settings of the test.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import textgen  # noqa: E402

STEPS = 30


def golden_overrides(objective: str, corpus_file: str, output_dir: str) -> list[str]:
    if objective == "mlm":
        model = ["model.model_type=bert", "model.config_overrides={hidden_size: 32, num_hidden_layers: 2, "
                 "num_attention_heads: 2, intermediate_size: 64, max_position_embeddings: 64}",
                 "objective.name=mlm"]
    else:
        model = ["model.model_type=gpt2", "model.config_overrides={n_embd: 32, n_layer: 2, n_head: 2, n_positions: 64}",
                 "objective.name=clm"]
    tokenizer = HERE / ("tokenizer-wordpiece" if objective == "mlm" else "tokenizer-bpe")
    return [f"output_dir={output_dir}", f"tokenizer.tokenizer_name_or_path={tokenizer}", f"data.train_files={corpus_file}",
            "data.max_seq_length=32", "data.shuffle_buffer_size=64", "data.validation_holdout_every=10",
            "training.per_device_train_batch_size=8", f"training.max_steps={STEPS}", "training.learning_rate=3e-3",
            "training.warmup_ratio=0.1", "training.logging_steps=1", "training.mixed_precision=no", "training.seed=42",
            "evaluation.eval_blocks=32", "evaluation.per_device_eval_batch_size=16", *model]


def write_corpus(directory: Path) -> str:
    path = directory / "train.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in textgen.documents(600, seed=1)))
    return str(path)


def run_losses(objective: str, directory: Path) -> dict:
    from sslnlp.config import PretrainConfig, load_config
    from sslnlp.training.loop import pretrain

    corpus_file = write_corpus(directory)
    output_dir = directory / objective
    summary = pretrain(load_config(PretrainConfig, None, golden_overrides(objective, corpus_file, str(output_dir))))
    records = [json.loads(line) for line in open(output_dir / "metrics.jsonl")]
    return {"losses": [r["loss"] for r in records if "loss" in r], "eval_loss": summary["eval_loss"]}


if __name__ == "__main__":
    results = {}
    for objective in ("mlm", "clm"):
        with tempfile.TemporaryDirectory() as directory:
            results[objective] = run_losses(objective, Path(directory))
    (HERE / "losses.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps({k: v["losses"][-3:] for k, v in results.items()}))
