"""Sentence embeddings per CPU-minute: masked LM alone, masked LM then SimCSE, and the joint objective, in one invocation.

    python benchmarks/simcse.py                        # three arms of --budget seconds (default 1,200 each): ~70 min
    python benchmarks/simcse.py --budget 300           # the same at 5 minutes per arm
    python benchmarks/simcse.py --finetune             # also fine-tune each arm (3 seeds, and random weights)
    python benchmarks/simcse.py --simcse-override objective.temperature=0.1   # change an arm's recipe

Run from the repository root, on an otherwise idle machine (the budgets are wall-clock seconds). Every arm trains on
the team's local corpus (``benchmarks/cram.py``'s LOCAL_DATA: ../shared/corpora/train.jsonl.xz, documents shuffled)
with one shared tokenizer, then is scored on wordnet_supersense (benchmarks/recipes/evaluate/cram-wordnet.yaml):
the mean-pooled linear probe of the last layer, the kNN score (cosine, k chosen on validation) and alignment /
uniformity, each beside the same architecture with random weights (measured once when the arms share their
architecture, as the recipes do); with --finetune, the fine-tune median of 3 seeds. A finished arm in --output-dir
(its summary.json) is reused, not trained again: an interrupted invocation continues where it stopped.

  1. masked LM: recipes/cram-cpu.yaml for the whole budget;
  2. masked LM then SimCSE: recipes/cram-cpu.yaml for 3/4 of the budget, then recipes/simcse-cpu.yaml from it for
     the last 1/4 (15 + 5 minutes at the default);
  3. joint: recipes/mlm-simcse-cpu.yaml (masked LM + 0.5 x contrastive on adjacent segments, one shared encoder
     pass) for the whole budget.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from cram import charts, evaluate, percent  # noqa: E402
from electra import train as train_recipe  # noqa: E402


def train(recipe: str, output_dir: Path, budget: float, tokenizer_dir: str, extra: list[str]) -> dict:
    """One arm's training run (benchmarks/electra.py's: local data, shared tokenizer, a finished run is reused)."""
    started = time.perf_counter()
    summary = train_recipe(recipe, output_dir, budget, tokenizer_dir, extra)
    print(f"{recipe} -> {output_dir}: {summary['steps']} steps, {summary['tokens'] / 1e6:.2f}M tokens in "
          f"{summary['train_runtime']:.0f} s (wall {time.perf_counter() - started:.0f} s); held-out loss "
          f"{summary.get('eval_loss', float('nan')):.4f}", flush=True)
    return summary


def architecture(model_dir: Path) -> dict:
    """The model's configuration less what does not change a random-weight twin (its class, dtype, provenance)."""
    config = json.loads((model_dir / "config.json").read_text())
    return {k: v for k, v in config.items() if k not in ("architectures", "dtype", "torch_dtype", "transformers_version")}


def cells(row: dict) -> list[str]:
    out = []
    for key in ("probe", "random_probe"):
        out.append(percent(row[key]["test"]["accuracy"]))
    for key in ("probe", "random_probe"):
        out.append(percent(row[key]["knn"]["test"]["accuracy"]) + f" (k={row[key]['knn']['k']})")
    for key in ("probe", "random_probe"):
        shape = row[key]["geometry"]
        out.append(f"{shape['alignment']:.3f} / {shape['uniformity']:.3f}")
    for key in ("finetune", "random_finetune"):
        summary = row.get(key)
        out.append(f"{percent(summary['median']['accuracy'])} ({percent(summary['min']['accuracy'])}-"
                   f"{percent(summary['max']['accuracy'])})" if summary else "–")
    return out


def main() -> None:
    from cram import shared_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="runs/bench-simcse")
    parser.add_argument("--budget", type=float, default=1200, help="seconds of training per arm")
    parser.add_argument("--finetune", action="store_true", help="also fine-tune every arm (3 seeds + random weights)")
    parser.add_argument("--simcse-override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra override of recipes/simcse-cpu.yaml (arm 2's second stage); repeatable")
    parser.add_argument("--joint-override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra override of recipes/mlm-simcse-cpu.yaml (arm 3); repeatable")
    args = parser.parse_args()
    output_dir = Path(args.output_dir)
    started = time.perf_counter()
    print(f"3 arms x {args.budget:.0f} s; load {Path('/proc/loadavg').read_text().split()[:3]}", flush=True)
    tokenizer_dir = shared_tokenizer(output_dir)
    first_stage = args.budget * 3 / 4
    arms = [("masked LM (cram-cpu)", output_dir / "mlm"),
            (f"masked LM {first_stage / 60:.0f} min, then SimCSE {(args.budget - first_stage) / 60:.0f} min",
             output_dir / "mlm-then-simcse"),
            ("joint: MLM + contrastive (mlm-simcse-cpu)", output_dir / "joint")]
    train("cram-cpu.yaml", arms[0][1], args.budget, tokenizer_dir, [])
    stage_one = output_dir / "mlm-stage-one"
    train("cram-cpu.yaml", stage_one, first_stage, tokenizer_dir, [])
    train("simcse-cpu.yaml", arms[1][1], args.budget - first_stage, tokenizer_dir,
          [f"model.model_name_or_path={stage_one}", *args.simcse_override])
    train("mlm-simcse-cpu.yaml", arms[2][1], args.budget, tokenizer_dir, args.joint_override)
    rows = []
    for name, directory in arms:
        shared = rows and architecture(directory) == architecture(arms[0][1])
        row = evaluate(directory, directory.with_name(directory.name + "-eval"), args.finetune,
                       ["random_baseline=false"] if shared else [])
        if shared:  # the same architecture with random weights (seed 0): the first arm's floors are this arm's
            row |= {key: rows[0][1][key] for key in ("random_probe", "random_finetune") if key in rows[0][1]}
        rows.append((name, row))
        print(f"{name}: " + " | ".join(cells(row)), flush=True)
    print()
    print(f"| arm ({args.budget / 60:.0f} CPU-min) | probe | floor | kNN | floor | alignment / uniformity | floor | "
          "fine-tune median (min-max) | random-weights fine-tune |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in rows:
        print(f"| {name} | " + " | ".join(cells(row)) + " |")
    charts(output_dir, [d for _, d in arms], ["mlm", "mlm-then-simcse", "joint"],
           [d.with_name(d.name + "-eval") for _, d in arms])
    print(f"\n{(time.perf_counter() - started) / 60:.1f} min in all", flush=True)


if __name__ == "__main__":
    main()
