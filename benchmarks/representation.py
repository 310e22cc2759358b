"""Do the representations learn anything? Pretrain the tiny recipe on real text for a fixed budget, then score it on
WordNet supersenses with a linear probe and fine-tuning, each next to the same model with random weights.

    python benchmarks/representation.py                                   # ~15-20 minutes on 2 CPU cores
    python benchmarks/representation.py --max-steps 300 --seeds 0 --epochs 2    # a quick look
    python benchmarks/representation.py --skip-pretrain --output-dir runs/bench-representation   # re-score

Run from the repository root. Steps:

  1. pretrain recipes/tiny-cpu.yaml (BERT, hidden 128, 2 layers, WordPiece 4096) on ../shared/corpora/small.jsonl.gz
     for --max-steps steps (32 x 128 tokens each) -> OUTPUT_DIR/model;
  2. probe and fine-tune it with benchmarks/recipes/evaluate/probe-wordnet.yaml (gloss -> one of 12 categories; 9,600 / 1,200 /
     1,200 examples) -> OUTPUT_DIR/eval/results.md, and the same architecture with random weights (the floor);
  3. print the table with the known references for the task (../shared/corpora/README.md): majority class 8.3%,
     TF-IDF word 1-2-grams + logistic regression 74.7%, frozen all-MiniLM-L6-v2 mean-pooled probe 77.6%.

The machine is shared: --threads 1 (the default) avoids the slowdown of two contending intra-op threads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # set before transformers/datasets are imported: they read them once
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a file, sys.path[0] is benchmarks/: measure this checkout's sslnlp

import torch  # noqa: E402

from sslnlp.config import EvaluateConfig, PretrainConfig, load_config  # noqa: E402
from sslnlp.evaluation.finetuning import finetune  # noqa: E402
from sslnlp.evaluation.probing import probe  # noqa: E402
from sslnlp.evaluation.results import results_markdown  # noqa: E402

REFERENCES = {"wordnet_supersense": {"majority class": 0.083, "TF-IDF 1-2-grams + logistic regression": 0.747,
                                     "frozen all-MiniLM-L6-v2 mean-pooled probe": 0.776}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="runs/bench-representation")
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared" / "corpora" / "small.jsonl.gz"))
    parser.add_argument("--max-steps", type=int, default=1000, help="pretraining budget in steps of 32 x 128 tokens")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tuning seeds")
    parser.add_argument("--epochs", type=float, default=3, help="fine-tuning epochs")
    parser.add_argument("--skip-pretrain", action="store_true", help="reuse OUTPUT_DIR/model")
    parser.add_argument("--skip-finetune", action="store_true", help="probe only")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    output_dir = Path(args.output_dir)
    timings = {}

    if not args.skip_pretrain:
        from sslnlp.training.loop import pretrain

        start = time.perf_counter()
        pretrain_config = load_config(PretrainConfig, ROOT / "recipes" / "tiny-cpu.yaml", [
            f"output_dir={output_dir / 'model'}", f"data.train_files={args.corpus}",
            f"training.max_steps={args.max_steps}", "training.save_steps=0", "training.logging_steps=50",
            "evaluation.eval_steps=0"])
        summary = pretrain(pretrain_config)
        timings["pretrain"] = time.perf_counter() - start
        print(f"pretrained {summary['steps']} steps, {summary['tokens']:,} tokens in {timings['pretrain']:.0f} s; "
              f"held-out MLM loss {summary.get('eval_loss', float('nan')):.3f}", flush=True)

    config = load_config(EvaluateConfig, ROOT / "benchmarks" / "recipes" / "evaluate" / "probe-wordnet.yaml", [
        f"model_name_or_path={output_dir / 'model'}", f"output_dir={output_dir / 'eval'}",
        f"finetune.seeds={json.dumps(args.seeds)}", f"finetune.num_train_epochs={args.epochs}"])
    # the recipe's paths are relative to the repository root
    config.tasks = [{k: (str(ROOT / v) if isinstance(v, str) and v.startswith("../") else v) for k, v in task.items()}
                    for task in config.tasks]
    start = time.perf_counter()
    results = probe(config)
    timings["probe"] = time.perf_counter() - start
    if not args.skip_finetune:
        start = time.perf_counter()
        results = finetune(config)
        timings["finetune"] = time.perf_counter() - start

    print()
    print(results_markdown(results, REFERENCES))
    print("wall clock: " + ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in timings.items()))


if __name__ == "__main__":
    main()
