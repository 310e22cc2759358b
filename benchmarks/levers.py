"""Quality per unit of compute: ELECTRA like for like, weight averaging, batch and length ramps, compiled steps, each
against recipes/cram-cpu.yaml at the same CPU budget, every arm with two seeds.

    python benchmarks/levers.py                          # every arm x 2 seeds at 1,200 s: ~6 h of training + scoring
    python benchmarks/levers.py --only cram-cpu electra-modernbert       # some arms (names below)
    python benchmarks/levers.py --budget 240 --seeds 42  # a short pass (ablations)
    python benchmarks/levers.py --electra-ablate --budget 240            # ELECTRA-on-ModernBERT lr / warmup / temperature
    python benchmarks/levers.py --only best --combine compile sequence-warmup   # a combination, as the arm "best"
    python benchmarks/levers.py --table                  # the table of every arm and seed finished so far

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
  best                  the overrides of the arms named by --combine, together (trained: compile and
                        sequence-warmup, the two levers with the best mean probes)
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import statistics
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from cram import EVALUATION_RECIPE, evaluate, percent, run_recipe, shared_tokenizer  # noqa: E402  (the recipe, data and scoring of cram.py)

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
    seeded = [*overrides, f"training.seed={seed}", f"data.seed={seed}"]
    if row_file.is_file():
        row = json.loads(row_file.read_text())
        if row["overrides"] != seeded:  # a finished arm is kept: it must be the arm asked for
            raise SystemExit(f"{row_file} was trained with {row['overrides']}, not {seeded}: pass the same "
                             f"overrides, or move {folder} away to train it again")
        return row
    if not (folder / "model" / "summary.json").is_file():
        run_recipe(folder / "model", budget, tokenizer, seeded)
    summary = json.loads((folder / "model" / "summary.json").read_text())
    scores = scored(output, folder, finetune)
    row = {"arm": name, "seed": seed, "overrides": seeded, "tokens": summary["tokens"],
           "train_runtime": summary["train_runtime"], "eval_loss": summary.get("eval_loss"),
           "eval_generator_loss": summary.get("eval_generator_loss"),
           "objective": "electra" if any("objective.name=electra" in o for o in seeded) else "mlm", "scores": scores}
    row_file.write_text(json.dumps(row, indent=2, default=str))
    return row


def floors_file(output: Path, model_dir: Path, finetune: bool) -> Path:
    """Where the random-weight floors of this architecture are kept: the twin is drawn from the evaluation's seed, not
    the training seed, so every arm and seed of one architecture (config and tokenizer) has the same floors."""
    config = json.loads((model_dir / "config.json").read_text())
    for key in ("_name_or_path", "architectures", "id2label", "label2id"):  # the twin: AutoModel, the task's own head
        config.pop(key, None)
    text = json.dumps([config, (model_dir / "tokenizer.json").read_text(), EVALUATION_RECIPE.read_text(), finetune],
                      sort_keys=True)
    return output / "floors" / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"


def scored(output: Path, folder: Path, finetune: bool) -> dict:
    """The probe, kNN and fine-tunes of one trained arm; its floors computed once per architecture (a fine-tune floor
    is 3 x ~110 s here) and reused."""
    cache = floors_file(output, folder / "model", finetune)
    if cache.is_file():
        scores = evaluate(folder / "model", folder / "scores", finetune, ["random_baseline=false"])
        scores.update(json.loads(cache.read_text()) | {"floors_from": str(cache)})
        return scores
    scores = evaluate(folder / "model", folder / "scores", finetune)
    cache.parent.mkdir(exist_ok=True)
    cache.write_text(json.dumps({key: scores[key] for key in scores if key.startswith("random_")}, indent=2,
                                default=str))
    return scores


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


def finished_rows(output: Path, arms: list[str], seeds: list[int]) -> list[dict]:
    """Every scored row under ``output`` of these arms (whichever invocation or session ran it), in the arms' order,
    then the seeds' (other seeds last)."""
    rows = []
    for name in arms:
        found = [json.loads(path.read_text()) for path in output.glob(f"{glob.escape(name)}-seed*/row.json")]
        rows += sorted(found, key=lambda row: (seeds.index(row["seed"]) if row["seed"] in seeds else len(seeds),
                                               row["seed"]))
    return rows


def mean(values: list) -> float | None:
    values = [value for value in values if value is not None]
    return statistics.mean(values) if values else None


def table(rows: list[dict]) -> str:
    """Each seed's row, then each arm's means over its seeds and their difference from cram-cpu's."""
    def spread(row: dict) -> str:  # the fine-tune seeds' (min-max)
        runs = row["scores"].get("finetune") or {}
        if "min" not in runs:
            return ""
        return f" ({percent(runs['min']['accuracy'])}-{percent(runs['max']['accuracy'])})"

    lines = ["| arm | seed | tokens | held-out MLM loss | probe (floor) | kNN (floor) | fine-tune, median (min-max) of 3 "
             "seeds (floor) |", "|---|---:|---:|---:|---|---|---|"]
    for row in rows:
        loss = row["eval_loss"] if row["objective"] == "mlm" else row.get("eval_generator_loss")
        loss = "–" if loss is None else f"{loss:.3f}" + (" (generator)" if row["objective"] == "electra" else "")
        lines.append(f"| {row['arm']} | {row['seed']} | {row['tokens']:,} | {loss} | "
                     f"{percent(score(row, 'probe'))} ({percent(score(row, 'random_probe'))}) | "
                     f"{percent(score(row, 'knn'))} ({percent(score(row, 'random_knn'))}) | "
                     f"{percent(score(row, 'finetune'))}{spread(row)} ({percent(score(row, 'random_finetune'))}) |")
    arms = sorted({row["arm"] for row in rows}, key=[row["arm"] for row in rows].index)
    means = {arm: {key: mean([score(row, key) for row in rows if row["arm"] == arm])
                   for key in ("probe", "knn", "finetune")} for arm in arms}
    baseline = means.get("cram-cpu")

    def cell(arm: str, key: str) -> str:
        value = means[arm][key]
        if value is None or baseline is None or baseline[key] is None or arm == "cram-cpu":
            return percent(value)
        return f"{percent(value)} ({100 * (value - baseline[key]):+.1f})"

    lines += ["", "| arm | seeds | probe mean (vs cram-cpu) | kNN mean | fine-tune mean |", "|---|---|---:|---:|---:|"]
    for arm in arms:
        seeds = ", ".join(str(row["seed"]) for row in rows if row["arm"] == arm)
        lines.append(f"| {arm} | {seeds} | {cell(arm, 'probe')} | {cell(arm, 'knn')} | {cell(arm, 'finetune')} |")
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
    parser.add_argument("--table", action="store_true", help="train nothing: the table of the arms finished so far")
    arguments = parser.parse_args()
    output = Path(arguments.output)
    output.mkdir(parents=True, exist_ok=True)
    arms = dict(ARMS)
    arms["electra-modernbert"] = [*ARMS["electra-modernbert"], *arguments.electra_overrides]
    if arguments.electra_ablate:
        arms = {f"electra-modernbert, {name}": [*ARMS["electra-modernbert"], *changes]
                for name, changes in ELECTRA_GRID.items()}
    if arguments.combine:
        arms["best"] = [override for name in arguments.combine for override in ARMS[name]]
    chosen = [name for name in arms if not arguments.table
              and (arguments.only is None or name in arguments.only or name == "best")]
    tokenizer = shared_tokenizer(output) if chosen else None
    for name in chosen:
        for seed in arguments.seeds:
            arm_run(output, name, seed, arguments.budget, tokenizer, arms[name], not arguments.skip_finetune)
    # This invocation's arms, every seed found, and a combination trained before ("best") without --combine now.
    shown = list(arms) if "best" in arms or arguments.electra_ablate else [*arms, "best"]
    text = table(finished_rows(output, shown, arguments.seeds))
    (output / ("electra-ablation.md" if arguments.electra_ablate else "levers.md")).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
