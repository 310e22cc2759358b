"""The results table of a checkpoint: OUTPUT_DIR/results.json (merged across probe and fine-tune runs into the same
output_dir) and results.md, one row per task and metric: probe | random-weights probe | kNN | random-weights kNN |
fine-tune median (min-max) | random-weights fine-tune, scores x 100; then the embedding geometry (alignment /
uniformity) of the probed models.

It sits below probing.py, finetuning.py, train.py and the model card (card.py renders the same table) and imports
none of them.
"""

from __future__ import annotations

import json
from pathlib import Path

from sslnlp.config import EvaluateConfig, to_dict
from sslnlp.files import write_text_atomic

CURVE_SERIES = {"probe": "probe", "random_probe": "random-weights probe", "tfidf": "TF-IDF + LR",
                "finetune": "fine-tune", "random_finetune": "random-weights fine-tune"}


def update_results(output_dir: str | Path, model_name_or_path: str, rows: dict) -> dict:
    """Merge this run's rows into OUTPUT_DIR/results.json (a probe and a fine-tune run fill one table); return it.

    A results.json written for another checkpoint is replaced, not merged.
    """
    path = Path(output_dir) / "results.json"
    results = {"model_name_or_path": model_name_or_path, "tasks": {}}
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except json.JSONDecodeError:
            previous = {}
        if previous.get("model_name_or_path") == model_name_or_path:
            results = previous
    for name, row in rows.items():
        merged = results["tasks"].get(name, {})
        if merged.get("fingerprint") != row["fingerprint"]:
            merged = {}  # the task's data changed: its old numbers do not belong next to the new ones
        curves = {**merged.get("curves", {}), **row.get("curves", {})}  # a probe and a fine-tune run fill one curve
        merged.update(row)
        if curves:
            merged["curves"] = curves
        results["tasks"][name] = merged
    return results


def percent(value: float | None) -> str:
    """A score x 100 with one decimal ('–' for none)."""
    return "–" if value is None else f"{100 * value:.1f}"


def results_markdown(results: dict, references: dict | None = None) -> str:
    """The results table: one row per task and metric, each score next to its random-weight floor.

    Args:
        results: the dict of ``update_results``.
        references: optional ``{task: {label: score}}`` printed under the table (known baselines).
    """
    lines = [f"Results for `{results['model_name_or_path']}` (scores x 100; fine-tune: median of seeds, (min-max))",
             "", "| task | metric | split | probe | random-weights probe | kNN | random-weights kNN | "
                 "fine-tune median (min-max) | random-weights fine-tune |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in results["tasks"].items():
        for metric in row["metrics"]:
            cells = []
            for key in ("probe", "random_probe"):
                layer = f" (layer {row[key]['layer']})" if key in row and "layer" in row[key] else ""
                cells.append(percent(row[key]["test"][metric]) + layer if key in row else "–")
            for key in ("probe", "random_probe"):
                knn = row.get(key, {}).get("knn")
                cells.append(f"{percent(knn['test'][metric])} (k={knn['k']})" if knn else "–")
            if "finetune" in row:
                summary = row["finetune"]
                cells.append(f"{percent(summary['median'][metric])} ({percent(summary['min'][metric])}-"
                             f"{percent(summary['max'][metric])})")
            else:
                cells.append("–")
            cells.append(percent(row["random_finetune"]["median"][metric]) if "random_finetune" in row else "–")
            lines.append(f"| {name} | {metric} | {row['split']} | " + " | ".join(cells) + " |")
    geometry = [(name, row) for name, row in results["tasks"].items()
                if any("geometry" in row.get(key, {}) for key in ("probe", "random_probe"))]
    if geometry:
        lines += ["", "Embedding geometry of the reported split (L2-normalised; lower is better for both; Wang & Isola "
                      "2020): alignment over same-label pairs, uniformity over all pairs", "",
                  "| task | alignment | random-weights alignment | uniformity | random-weights uniformity |",
                  "|---|---:|---:|---:|---:|"]
        for name, row in geometry:
            cells = []
            for measure in ("alignment", "uniformity"):
                for key in ("probe", "random_probe"):
                    value = row.get(key, {}).get("geometry", {}).get(measure)
                    cells.append("–" if value is None else f"{value:.3f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += curve_markdown(results)
    for task, known in (references or {}).items():
        lines.append("")
        lines.append(f"Known references for {task}: " + "; ".join(f"{label} {percent(score)}"
                                                                   for label, score in known.items()))
    return "\n".join(lines) + "\n"


def curve_markdown(results: dict) -> list[str]:
    """The learning curves: per task, one row per training-set size, median (min-max) over seeds of each series."""
    lines = []
    for name, row in results["tasks"].items():
        curves = row.get("curves") or {}
        if not curves:
            continue
        metric = row["metrics"][0]
        series = [key for key in CURVE_SERIES if key in curves]
        sizes = sorted({point["size"] for key in series for point in curves[key]})
        seeds = sorted({seed for key in series for point in curves[key] for seed in point["seeds"]})
        lines += ["", f"Learning curve of {name} ({metric} x 100 on {row['split']}; median (min-max) over seeds "
                      f"{seeds}, each a stratified subset of the train split)", "",
                  "| train examples | " + " | ".join(CURVE_SERIES[key] for key in series) + " |",
                  "|---:|" + "---:|" * len(series)]
        for size in sizes:
            cells = []
            for key in series:
                point = next((p for p in curves[key] if p["size"] == size), None)
                cells.append("–" if point is None else f"{percent(point['median'][metric])} "
                                                       f"({percent(point['min'][metric])}-{percent(point['max'][metric])})")
            lines.append(f"| {size:,} | " + " | ".join(cells) + " |")
    return lines


def write_results(output_dir: str | Path, results: dict) -> None:
    """Write results.json and results.md into ``output_dir`` (each replaced atomically)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (("results.json", json.dumps(results, indent=2)), ("results.md", results_markdown(results))):
        write_text_atomic(output_dir / name, text)


def record_results(config: EvaluateConfig, accelerator, rows: dict) -> dict:
    """Merge a probe or fine-tune run's ``rows`` into the output_dir's results, write them (and the run's
    evaluate_config.json) from the main process, print the table; return the merged results."""
    results = update_results(config.output_dir, config.model_name_or_path, rows)
    if accelerator.is_main_process:
        write_results(config.output_dir, results)
        (Path(config.output_dir) / "evaluate_config.json").write_text(json.dumps(to_dict(config), indent=2, default=str))
    accelerator.wait_for_everyone()
    accelerator.print(results_markdown(results))
    return results
