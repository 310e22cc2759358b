"""Replaced-token detection against masked LM at the same CPU budget: recipes/electra-cpu.yaml vs recipes/cram-cpu.yaml.

    python benchmarks/electra.py                              # both recipes 20 min each, probe + fine-tune: ~65 min
    python benchmarks/electra.py --skip-finetune              # probe only
    python benchmarks/electra.py --ablate --budget 240        # ELECTRA settings, 240 s each, probed
    python benchmarks/electra.py --ablate --budget 240 --only "lr" "generator"
    python benchmarks/electra.py --cost                       # step cost: ELECTRA vs MLM of the same discriminator

Run from the repository root, on an otherwise idle machine (the budgets are wall-clock seconds). Both recipes read
../shared/corpora/train.jsonl.xz with one shared tokenizer (WordPiece 8,192 on the first 20,000 shuffled documents,
as benchmarks/cram.py's ablations), train for --budget seconds, then are scored on wordnet_supersense with
benchmarks/recipes/evaluate/cram-wordnet.yaml: the mean-pooled linear probe of the last layer, of the layer best on validation,
and fine-tuning (3 seeds), each next to the same architecture with random weights (the floor). ELECTRA is scored on
its discriminator (the model it keeps). --cost runs A B A B: MLM (ElectraForMaskedLM, sparse head) and ELECTRA with
the paper's generator (1/4 wide) on the same discriminator, --cost-steps steps each, and prints tokens/s and the
ratio of step times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from cram import LOCAL_DATA, charts, evaluate, percent, row_cells, shared_tokenizer  # noqa: E402

ABLATIONS = {
    "electra-cpu.yaml": [],
    "lr 5e-4 (instead of 1.5e-3)": ["training.learning_rate=5e-4"],
    "generator 1/2 wide (instead of 1/4)": ["objective.generator_size=0.5"],
    "mask 25% (instead of 15%)": ["objective.mlm_probability=0.25"],
    "discriminator weight 20 (instead of 50)": ["objective.discriminator_weight=20"],
    "discriminator scored on masked positions only": ["objective.discriminator_positions=masked"],
    "fp32 (instead of bf16)": ["training.mixed_precision=no"],
    "temperature 3 (instead of 1)": ["objective.temperature=3"],
    "temperature 100 (near-uniform replacements)": ["objective.temperature=100"],
}


def config_of(recipe: str, output_dir: Path, budget: float, tokenizer_dir: str, extra: list[str]):
    from sslnlp.config import PretrainConfig, load_config

    overrides = [f"output_dir={output_dir}", f"training.max_time={budget}", f"tokenizer.tokenizer_name_or_path={tokenizer_dir}",
                 *LOCAL_DATA]
    config = load_config(PretrainConfig, ROOT / "recipes" / recipe, overrides + list(extra))
    config.evaluation.probe_task = {}  # scored below with the evaluation recipe, floor included
    return config


def train(recipe: str, output_dir: Path, budget: float, tokenizer_dir: str, extra: list[str]) -> dict:
    from sslnlp.training.loop import pretrain

    if (output_dir / "summary.json").exists():  # an interrupted invocation: evaluate what finished
        return json.loads((output_dir / "summary.json").read_text())
    return pretrain(config_of(recipe, output_dir, budget, tokenizer_dir, extra))


def describe(name: str, summary: dict) -> str:
    keys = ("eval_loss", "eval_generator_loss", "eval_discriminator_loss", "eval_generator_accuracy",
            "eval_discriminator_accuracy", "eval_replaced_fraction")
    return f"{name}: {summary['steps']} steps, {summary['tokens'] / 1e6:.2f}M tokens; " + ", ".join(
        f"{k[5:]} {summary[k]:.3f}" for k in keys if k in summary)


def comparison(args, output_dir: Path) -> None:
    tokenizer_dir = shared_tokenizer(output_dir)
    lines = []
    for label, recipe in (("ELECTRA, recipes/electra-cpu.yaml", "electra-cpu.yaml"),
                          ("masked LM, recipes/cram-cpu.yaml", "cram-cpu.yaml")):
        directory = output_dir / recipe.removesuffix(".yaml")
        summary = train(recipe, directory / "model", args.budget, tokenizer_dir, args.override)
        print(describe(label, summary), flush=True)
        row = evaluate(directory / "model", directory / "eval", not args.skip_finetune, layer0=True)
        lines.append([label, str(summary["steps"]), f"{summary['tokens'] / 1e6:.1f}", *row_cells(row)])
        print(" | ".join(lines[-1]), flush=True)
    print()
    print("| pipeline | steps | tokens (M) | probe, last layer | floor | probe, embeddings | floor | "
          "probe, layer best on validation | floor, likewise | fine-tune median (min-max) | random-weights fine-tune |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for line in lines:
        print("| " + " | ".join(line) + " |")
    directories = [output_dir / name for name in ("electra-cpu", "cram-cpu")]
    charts(output_dir, [d / "model" for d in directories], ["electra-cpu", "cram-cpu"], [d / "eval" for d in directories])


def ablate(args, output_dir: Path) -> None:
    tokenizer_dir = shared_tokenizer(output_dir)
    names = [name for name in ABLATIONS if not args.only or any(part in name for part in args.only)]
    rows = []
    for name in names:
        directory = output_dir / f"electra-ablation-{list(ABLATIONS).index(name)}"
        summary = train("electra-cpu.yaml", directory / "model", args.budget, tokenizer_dir, ABLATIONS[name] + args.override)
        row = evaluate(directory / "model", directory / "eval", False)
        rows.append((name, summary, row))
        print(describe(name, summary) + f"; probe {percent(row['probe']['test']['accuracy'])} (floor "
              f"{percent(row['random_probe']['test']['accuracy'])})", flush=True)
    print()
    print(f"| variant ({args.budget:.0f} s each) | steps | generator loss | discriminator loss | discriminator accuracy "
          "| replaced fraction | probe (last layer) | floor | probe - floor |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, summary, row in rows:
        probe, floor = row["probe"]["test"]["accuracy"], row["random_probe"]["test"]["accuracy"]
        print(f"| {name} | {summary['steps']} | {summary.get('eval_generator_loss', float('nan')):.3f} | "
              f"{summary.get('eval_discriminator_loss', float('nan')):.3f} | "
              f"{summary.get('eval_discriminator_accuracy', float('nan')):.3f} | "
              f"{summary.get('eval_replaced_fraction', float('nan')):.3f} | {percent(probe)} | {percent(floor)} | "
              f"{100 * (probe - floor):+.1f} |")
    directories = [output_dir / f"electra-ablation-{list(ABLATIONS).index(name)}" for name in names]
    charts(output_dir, [d / "model" for d in directories], names, [d / "eval" for d in directories])


def cost(args, output_dir: Path) -> None:
    """tokens/s of MLM and ELECTRA on the same discriminator (electra-cpu's), alternating A B A B."""
    from sslnlp.training.loop import pretrain

    tokenizer_dir = shared_tokenizer(output_dir)
    from sslnlp.objectives import get_objective

    mlm = get_objective("mlm").Config(mlm_probability=0.15, mask_replace_probability=0.85, random_replace_probability=0.0)
    arms = {"MLM (same discriminator, ElectraForMaskedLM, sparse head)": mlm, "ELECTRA (generator 1/4 wide)": None}
    rates: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.repeats):
        for name, extra in arms.items():
            with tempfile.TemporaryDirectory() as directory:
                config = config_of("electra-cpu.yaml", Path(directory) / "run", 0, tokenizer_dir,
                                   ["training.max_time=0", f"training.max_steps={args.cost_steps}",
                                    "training.logging_steps=10", "data.validation_files=null"])
                if extra is not None:  # the same recipe with the masked-LM objective (the paper's masking)
                    config.objective = extra
                pretrain(config)
                records = [json.loads(line) for line in open(Path(directory) / "run" / "metrics.jsonl")]
            steady = [r["tokens_per_second"] for r in records if "tokens_per_second" in r][1:]  # first window: warm-up
            rates[name].append(statistics.median(steady))
            print(f"{name}: {rates[name][-1]:,.0f} tokens/s", flush=True)
    mlm, electra = (statistics.median(values) for values in rates.values())
    print("\n| objective | tokens/s (median of runs) | runs |\n|---|---:|---|")
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):,.0f} | {', '.join(f'{v:,.0f}' for v in values)} |")
    print(f"\nELECTRA step cost / MLM step cost: {mlm / electra:.2f}x (target: at most 1.35x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="runs/bench-electra")
    parser.add_argument("--budget", type=float, default=1200, help="seconds of training per run")
    parser.add_argument("--skip-finetune", action="store_true")
    parser.add_argument("--ablate", action="store_true")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--cost", action="store_true")
    parser.add_argument("--cost-steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    output_dir = Path(args.output_dir)
    started = time.perf_counter()
    if args.ablate:
        ablate(args, output_dir)
    elif args.cost:
        cost(args, output_dir)
    else:
        comparison(args, output_dir)
    print(f"total wall time {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
