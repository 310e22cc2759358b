"""Quality per unit of compute: ELECTRA like for like, weight averaging, batch and length ramps, compiled steps, each
against recipes/cram-cpu.yaml at the same CPU budget, every arm with two seeds.

    python benchmarks/levers.py                          # every arm x 2 seeds at 1,200 s: ~6 h of training + scoring
    python benchmarks/levers.py --only cram-cpu electra-modernbert       # some arms (names below)
    python benchmarks/levers.py --budget 240 --seeds 42  # a short pass (ablations)
    python benchmarks/levers.py --electra-ablate --budget 240            # ELECTRA-on-ModernBERT lr / warmup / temperature
    python benchmarks/levers.py --combine weight-averaging sequence-warmup   # the best combination, as one more arm

TEAM-LOCAL: trains on ../shared/corpora/train.jsonl.xz and scores on wordnet_supersense exactly as benchmarks/cram.py
does (one shared WordPiece 8,192 tokenizer; benchmarks/recipes/evaluate/cram-wordnet.yaml: the mean-pooled probe,
kNN and fine-tuning with 3 seeds, each beside the same architecture with random weights). Budgets are wall-clock
seconds (training.max_time): run on an otherwise idle machine, one arm at a time. Finished arms are kept (their
summary and scores under --output), so the table can be built over several sessions; each row names its seed.

The arms (dotted overrides of recipes/cram-cpu.yaml):
  cram-cpu              the recipe as it is (the baseline whose schedule decays fully within the budget)
  electra-modernbert    ELECTRA on the recipe's ModernBERT: a generator of the same width and half the layers;
                        its learning rate, warmup and temperature from --electra-overrides (set them from
                        --electra-ablate)
  mlm-electra-backbone  masked LM on recipes/electra-cpu.yaml's Electra backbone with that recipe's settings (so
                        architecture and objective separate)
  electra-paper         recipes/electra-cpu.yaml with the paper's learning rate (5e-4) and warmup share (10,000 of
                        ELECTRA-Small's 1M steps: 1%; 10,000 steps would be longer than the whole CPU run)
  weight-averaging      + training.ema_decay=0.998 (the average is what is evaluated and exported)
  batch-ramp            + the global batch of 32 grown from a quarter over the first half (8 x 1..4 micro-batches)
  sequence-warmup       + blocks from 32 tokens to 128 over the first 30%
  compile               + training.torch_compile
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from cram import evaluate, run_recipe, shared_tokenizer  # noqa: E402  (the recipe, data and scoring of cram.py)

ELECTRA_RECIPE = yaml.safe_load((ROOT / "recipes" / "electra-cpu.yaml").read_text())
ELECTRA_BACKBONE = ["model.model_type=electra",
                    "model.config_overrides=" + json.dumps(ELECTRA_RECIPE["model"]["config_overrides"]),
                    f"training.learning_rate={ELECTRA_RECIPE['training']['learning_rate']}",
                    f"training.warmup_ratio={ELECTRA_RECIPE['training']['warmup_ratio']}"]
ELECTRA_OBJECTIVE = [f"objective.{key}={value}" for key, value in ELECTRA_RECIPE["objective"].items()]
ARMS = {
    "cram-cpu": [],
    "electra-modernbert": ["objective.name=electra", "objective.generator_size=1.0", "objective.generator_layers=0.5"],
    "mlm-electra-backbone": ELECTRA_BACKBONE,
    "electra-paper": [*ELECTRA_BACKBONE, *ELECTRA_OBJECTIVE, "training.learning_rate=5e-4", "training.warmup_ratio=0.01"],
    "weight-averaging": ["training.ema_decay=0.998"],
    "batch-ramp": ["training.per_device_train_batch_size=8", "training.gradient_accumulation_steps=4",
                   "training.batch_size_warmup=0.5"],
    "sequence-warmup": ["training.sequence_length_warmup=0.3", "training.sequence_length_warmup_start=32"],
    "compile": ["training.torch_compile=true"],
}
ELECTRA_GRID = {  # --electra-ablate: one change at a time from the first line
    "lr 1.5e-3, warmup 5%, temperature 1": [],
    "lr 5e-4": ["training.learning_rate=5e-4"],
    "lr 1e-3": ["training.learning_rate=1e-3"],
    "warmup 10%": ["training.warmup_ratio=0.1"],
    "temperature 1.5": ["objective.temperature=1.5"],
    "discriminator weight 20": ["objective.discriminator_weight=20"],
}


def arm_run(output: Path, name: str, seed: int, budget: float, tokenizer: str, overrides: list[str],
            finetune: bool) -> dict:
    """Train (unless done) and score (unless done) one arm for one seed; its row."""
    folder = output / f"{name}-seed{seed}"
    row_file = folder / "row.json"
    if row_file.is_file():
        return json.loads(row_file.read_text())
    seeded = [*overrides, f"training.seed={seed}", f"data.seed={seed}"]
    if not (folder / "model" / "summary.json").is_file():
        run_recipe(folder / "model", budget, tokenizer, seeded)
    summary = json.loads((folder / "model" / "summary.json").read_text())
    scores = evaluate(folder / "model", folder / "scores", finetune)
    row = {"arm": name, "seed": seed, "overrides": seeded, "tokens": summary["tokens"],
           "train_runtime": summary["train_runtime"], "eval_loss": summary.get("eval_loss"),
           "objective": "electra" if any("objective.name=electra" in o for o in seeded) else "mlm", "scores": scores}
    row_file.write_text(json.dumps(row, indent=2, default=str))
    return row


def score(row: dict, key: str, metric: str = "accuracy"):
    """A test score of a row: probe / knn / finetune, or their random-weight floors (random_*)."""
    if key.endswith("knn"):  # the kNN score sits in the probe's result
        scores = (row["scores"].get(key.replace("knn", "probe")) or {}).get("knn")
    else:
        scores = row["scores"].get(key)
    if not scores:
        return None
    if "test" in scores:
        return scores["test"].get(metric)
    return (scores.get("median") or {}).get(metric)


def table(rows: list[dict]) -> str:
    percent = lambda value: "–" if value is None else f"{100 * value:.1f}"  # noqa: E731
    lines = ["| arm | seed | tokens | held-out MLM loss | probe (floor) | kNN (floor) | fine-tune median of 3 (floor) |",
             "|---|---:|---:|---:|---|---|---|"]
    for row in rows:
        loss = f"{row['eval_loss']:.3f}" if row["eval_loss"] is not None and row["objective"] == "mlm" else "–"
        lines.append(f"| {row['arm']} | {row['seed']} | {row['tokens']:,} | {loss} | "
                     f"{percent(score(row, 'probe'))} ({percent(score(row, 'random_probe'))}) | "
                     f"{percent(score(row, 'knn'))} ({percent(score(row, 'random_knn'))}) | "
                     f"{percent(score(row, 'finetune'))} ({percent(score(row, 'random_finetune'))}) |")
    arms = sorted({row["arm"] for row in rows}, key=[row["arm"] for row in rows].index)
    lines += ["", "| arm | seeds | probe mean | fine-tune mean |", "|---|---:|---:|---:|"]
    for arm in arms:
        mine = [row for row in rows if row["arm"] == arm]
        probes = [score(row, "probe") for row in mine if score(row, "probe") is not None]
        tunes = [score(row, "finetune") for row in mine if score(row, "finetune") is not None]
        lines.append(f"| {arm} | {len(mine)} | {percent(statistics.mean(probes)) if probes else '–'} | "
                     f"{percent(statistics.mean(tunes)) if tunes else '–'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=str(ROOT / "runs" / "bench-levers"))
    parser.add_argument("--budget", type=float, default=1200, help="seconds of training per arm and seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7])
    parser.add_argument("--only", nargs="*", default=None, help="arms to run (names as listed above)")
    parser.add_argument("--electra-overrides", nargs="*", default=[],
                        help="electra-modernbert's learning rate, warmup, temperature (from --electra-ablate)")
    parser.add_argument("--combine", nargs="*", default=None, help="arms whose overrides make one more arm, 'best'")
    parser.add_argument("--electra-ablate", action="store_true", help="ELECTRA on ModernBERT, one change at a time")
    parser.add_argument("--skip-finetune", action="store_true", help="probe and kNN only")
    arguments = parser.parse_args()
    output = Path(arguments.output)
    output.mkdir(parents=True, exist_ok=True)
    tokenizer = shared_tokenizer(output)
    arms = dict(ARMS)
    arms["electra-modernbert"] = [*ARMS["electra-modernbert"], *arguments.electra_overrides]
    if arguments.electra_ablate:
        arms = {f"electra-modernbert, {name}": [*ARMS["electra-modernbert"], *changes]
                for name, changes in ELECTRA_GRID.items()}
    if arguments.combine:
        arms["best"] = [override for name in arguments.combine for override in ARMS[name]]
    chosen = [name for name in arms if arguments.only is None or name in arguments.only or name == "best"]
    rows = [arm_run(output, name, seed, arguments.budget, tokenizer, arms[name], not arguments.skip_finetune)
            for name in chosen for seed in arguments.seeds]
    text = table(rows)
    (output / "levers.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
