"""What pretraining buys with few labels: learning curves of the 20-minute cram-cpu model on WordNet supersenses,
beside its random-weight twin and TF-IDF + logistic regression on the same stratified subsets.

    python benchmarks/curves.py                                  # train cram-cpu 20 min, then both curves (~80 min)
    python benchmarks/curves.py --model runs/bench-cram/cram/model   # an existing cram-cpu model: curves only
    python benchmarks/curves.py --model DIR --protocols           # the small-size fine-tuning settings compared

Run from the repository root, on an otherwise idle machine (the pretraining budget is wall-clock seconds). TEAM-LOCAL:
pretrains on ../shared/corpora (benchmarks/cram.py's LOCAL_DATA) and scores on wordnet_supersense
(benchmarks/recipes/evaluate/cram-wordnet.yaml): 9,600 / 1,200 / 1,200 examples, 12 balanced classes.

  1. ``sslnlp pretrain recipes/cram-cpu.yaml`` on the local corpus for --budget seconds (unless --model).
  2. ``sslnlp probe`` with train_sizes (default 64, 256, 1024, all) and curve_seeds (default 0, 1, 2): the probe of
     the model and of its random twin refitted on each subset (features extracted once), TF-IDF on the same subsets.
  3. ``sslnlp finetune`` with the same sizes and seeds and the small-size protocol below; the whole split's runs are
     the protocol's three seeds.
  4. the curve table (results.md) and the chart (``sslnlp report``: OUTPUT_DIR/eval/report/learning_curves.png).

--protocols fine-tunes at 64 and 256 examples (3 seeds, the model and its twin) under each PROTOCOLS entry, so the
curve's settings are chosen by measurement: the default protocol (3 epochs: 6 steps at 64 examples) against a fixed
number of steps with validation at evenly spaced points and the test score taken at the best one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from cram import EVALUATION_RECIPE, LOCAL_DATA  # noqa: E402  (the team's corpus and task, one definition)

# The small-size fine-tuning protocol the curve uses: at least 200 optimizer steps (a 64-example subset is 2 steps
# an epoch), validated 10 times, the test score taken at the best validation point (--protocols measures it).
CURVE_PROTOCOL = ["finetune.min_steps=200", "finetune.evaluations=10", "finetune.early_stopping=true"]
PROTOCOLS = {
    "3 epochs (the default protocol)": [],
    "200 steps, best of 10 validations": CURVE_PROTOCOL,
    "200 steps, last": ["finetune.min_steps=200", "finetune.evaluations=10"],
    "200 steps at lr 1e-4, best of 10": CURVE_PROTOCOL + ["finetune.learning_rate=1e-4"],
}


def sslnlp(*arguments: str) -> None:
    """One sslnlp command in a fresh process (as a user runs it), its output shown."""
    command = [sys.executable, "-m", "sslnlp", *map(str, arguments)]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def pretrain(output: Path, budget: int) -> Path:
    model = output / "cram"
    sslnlp("pretrain", "recipes/cram-cpu.yaml", *LOCAL_DATA, f"training.max_time={budget}", "evaluation.probe_task={}",
           "--output-dir", str(model),
           "--quiet")
    return model


def curves(model: Path, output: Path, sizes: list, seeds: list[int]) -> dict:
    common = [str(EVALUATION_RECIPE), f"model_name_or_path={model}", f"train_sizes={json.dumps(sizes)}",
              f"curve_seeds={json.dumps(seeds)}", "--output-dir", str(output)]
    started = time.perf_counter()
    sslnlp("probe", *common)
    probed = time.perf_counter()
    sslnlp("finetune", *common, *CURVE_PROTOCOL, "finetune.save_model=false")
    finished = time.perf_counter()
    sslnlp("report", str(output), "--output-dir", str(output / "report"), "--title", "Learning curves: cram-cpu")
    print(f"probe curves {(probed - started) / 60:.1f} min, fine-tune curves {(finished - probed) / 60:.1f} min")
    print((output / "results.md").read_text())
    return json.loads((output / "results.json").read_text())


def protocols(model: Path, output: Path, seeds: list[int]) -> None:
    """The small-size fine-tuning settings, each at 64 and 256 examples (a curve without 'all' trains on no whole
    split)."""
    rows = []
    for name, overrides in PROTOCOLS.items():
        directory = output / "protocols" / name.split(" (")[0].replace(" ", "-").replace(",", "")
        sslnlp("finetune", str(EVALUATION_RECIPE), f"model_name_or_path={model}", "train_sizes=[64, 256]",
               f"curve_seeds={json.dumps(seeds)}", "tfidf_baseline=false",
               "finetune.save_model=false", *overrides, "--output-dir", str(directory))
        row = json.loads((directory / "results.json").read_text())["tasks"]["wordnet_supersense"]["curves"]
        rows.append((name, row))
    print("\n| protocol | size | fine-tune median (min-max) | random-weights fine-tune |\n|---|---:|---:|---:|")
    for name, curve in rows:
        for index, point in enumerate(curve["finetune"]):
            twin = curve["random_finetune"][index]
            print(f"| {name} | {point['size']} | {100 * point['median']['accuracy']:.1f} "
                  f"({100 * point['min']['accuracy']:.1f}-{100 * point['max']['accuracy']:.1f}) | "
                  f"{100 * twin['median']['accuracy']:.1f} ({100 * twin['min']['accuracy']:.1f}-"
                  f"{100 * twin['max']['accuracy']:.1f}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/bench-curves", help="where runs and results go")
    parser.add_argument("--model", default=None, help="an existing cram-cpu model directory (skip pretraining)")
    parser.add_argument("--budget", type=int, default=1200, help="pretraining seconds (the recipe's 20 minutes)")
    parser.add_argument("--sizes", default='[64, 256, 1024, "all"]', help="train_sizes, as JSON")
    parser.add_argument("--seeds", default="[0, 1, 2]", help="curve_seeds, as JSON")
    parser.add_argument("--protocols", action="store_true", help="compare the small-size fine-tuning settings")
    args = parser.parse_args()
    output = Path(args.output)
    model = Path(args.model) if args.model else pretrain(output, args.budget)
    if args.protocols:
        protocols(model, output, json.loads(args.seeds))
        return
    curves(model, output / "eval", json.loads(args.sizes), json.loads(args.seeds))


if __name__ == "__main__":
    main()
