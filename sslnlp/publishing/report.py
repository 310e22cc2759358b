"""See runs: a self-contained HTML page and PNG charts from one or more run directories.

    sslnlp report runs/cram-cpu                                # -> runs/cram-cpu/report/index.html
    sslnlp report runs/ablation-* --output runs/ablation-report  # several runs overlaid, one colour each

    from sslnlp.publishing.report import write_report
    write_report(["runs/a", "runs/b"], "runs/report")

Reads what a run writes (metrics.jsonl, summary.json, config.yaml) and, when it finds one, the results.json of
``sslnlp probe`` / ``sslnlp finetune`` for that run (in the run directory, in a sibling directory whose results name
the run, or given with ``results=``). A resumed run reads as one line: records that a resume wrote again for steps
already logged replace the earlier ones. Charts: loss against tokens and against time (training loss and held-out
loss), learning rate, tokens/s and MFU, data-wait fraction, probe and held-out scores against steps, and the
objective's own metrics (ELECTRA's generator and discriminator, ...). ``report.json`` holds every plotted series.

The charts need matplotlib (``pip install "sslnlp[report]"``); it is imported here only.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sslnlp.evaluation.results import CURVE_SERIES, percent

#: Keys of a training-window record that have charts of their own (the rest are the objective's metrics).
CORE_KEYS = {"step", "loss", "learning_rate", "tokens", "tokens_per_second", "model_flops_utilization",
             "data_wait_fraction", "elapsed", "nonfinite_steps"}


class ReportError(ValueError):
    """A run directory that cannot be reported: one line naming it and what to do."""


@dataclass
class RunRecords:
    """What one run directory holds, ready to plot."""

    label: str
    path: Path
    train: list[dict] = field(default_factory=list)  # training windows, one per logging step
    evaluations: list[dict] = field(default_factory=list)  # held-out evaluations (eval_* keys)
    probes: list[dict] = field(default_factory=list)  # probes during training (probe_* keys)
    summary: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    results: dict | None = None  # sslnlp probe / finetune results.json for this run
    resumes: int = 0  # how many times the log restarts at an earlier step (a resumed run)


def _last_per_step(records: list[dict]) -> tuple[list[dict], int]:
    """Records in log order with a resume's repeats resolved: a record at a step at or before one already seen
    starts a resumed segment, which replaces everything logged from that step on."""
    kept, resumes = [], 0
    for record in records:
        if kept and record["step"] <= kept[-1]["step"]:
            resumes += 1
            kept = [r for r in kept if r["step"] < record["step"]]
        kept.append(record)
    return kept, resumes


def _names_run(named: Path, results_file: Path, run_dir: Path) -> bool:
    """Whether results.json's model_name_or_path is run_dir: as written (relative to where sslnlp probe ran: this
    directory, or one above the results file)."""
    target = run_dir.resolve()
    bases = [Path.cwd(), *results_file.resolve().parents] if not named.is_absolute() else [Path("/")]
    return any((base / named).resolve() == target for base in bases if (base / named).exists())


def _find_results(run_dir: Path, explicit: list[Path]) -> dict | None:
    candidates = [p / "results.json" if p.is_dir() else p for p in explicit]
    candidates += [run_dir / "results.json"]
    if run_dir.parent.is_dir():
        candidates += sorted(run_dir.parent.glob("*/results.json"))
    for candidate in candidates:
        if not candidate.is_file():
            continue
        try:
            results = json.loads(candidate.read_text())
        except json.JSONDecodeError as error:
            raise ReportError(f"{candidate}: not valid JSON ({error}); rerun sslnlp probe / finetune") from None
        if candidate.parent == run_dir or _names_run(Path(str(results.get("model_name_or_path", ""))), candidate, run_dir):
            return results
    return None


def read_run(run_dir: str | Path, label: str | None = None, results: list[str | Path] = ()) -> RunRecords:
    """Read a run directory (metrics.jsonl is required; summary.json, config.yaml and results.json are optional)."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file() and not (run_dir / "results.json").is_file():
        raise ReportError(f"{run_dir}: no metrics.jsonl and no results.json; give the output_dir of an sslnlp "
                          "pretrain, probe or finetune run")
    train, evaluations, probes = [], [], []
    lines = metrics.read_text().splitlines() if metrics.is_file() else []  # an evaluation's directory: results only
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue  # the last line of a killed run can be cut short
            raise ReportError(f"{metrics}:{number}: not a JSON record; remove the line or rewrite the file") from None
        if not isinstance(record, dict) or "step" not in record:
            continue
        if "loss" in record:
            train.append(record)
        elif any(key.startswith("eval_") for key in record):
            evaluations.append(record)
        elif any(key.startswith("probe_") for key in record):
            probes.append(record)
    run = RunRecords(label=label or run_dir.name, path=run_dir)
    run.train, run.resumes = _last_per_step(train)
    run.evaluations, _ = _last_per_step(evaluations)
    run.probes, _ = _last_per_step(probes)
    for name, attribute, parse in (("summary.json", "summary", json.loads), ("config.yaml", "config", yaml.safe_load)):
        if (run_dir / name).is_file():
            setattr(run, attribute, parse((run_dir / name).read_text()) or {})
    run.results = _find_results(run_dir, [Path(p) for p in results])
    return run


def _labels(run_dirs: list[Path]) -> list[str]:
    """Short distinct labels: the directory names, or more of the path where names repeat."""
    parts = [p.resolve().parts for p in run_dirs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in run_dirs]


# ------------------------------------------------------------------------------------------------------- series


def _xy(records: list[dict], x: str, y: str, scale: float = 1.0) -> list[list[float]]:
    return [[r[x] * (scale if x == "elapsed" else 1.0), r[y] * (scale if y == "elapsed" else 1.0)] for r in records
            if isinstance(r.get(x), (int, float)) and isinstance(r.get(y), (int, float)) and math.isfinite(r[y])]


def _with_position(run: RunRecords, records: list[dict]) -> list[dict]:
    """Evaluation / probe records with their tokens and elapsed time (written with them since 2026-12; for older
    logs interpolated between the neighbouring training windows)."""
    windows = [r for r in run.train if isinstance(r.get("tokens"), (int, float)) and isinstance(r.get("elapsed"), (int, float))]
    placed = []
    for record in records:
        if "tokens" not in record and windows:
            before = max((w for w in windows if w["step"] <= record["step"]), key=lambda w: w["step"], default=windows[0])
            after = min((w for w in windows if w["step"] >= record["step"]), key=lambda w: w["step"], default=windows[-1])
            share = (record["step"] - before["step"]) / (after["step"] - before["step"]) if after["step"] != before["step"] else 0.0
            record = {**record, **{k: before[k] + share * (after[k] - before[k]) for k in ("tokens", "elapsed")}}
        placed.append(record)
    return placed


def chart_series(run: RunRecords) -> dict[str, dict[str, list]]:
    """{chart: {series: [[x, y], ...]}} for one run: what each chart plots."""
    evaluations = _with_position(run, run.evaluations)
    minutes = 1 / 60
    charts = {
        "loss_tokens": {"training loss": _xy(run.train, "tokens", "loss"),
                        "held-out loss": _xy(evaluations, "tokens", "eval_loss")},
        "loss_time": {"training loss": _xy(run.train, "elapsed", "loss", minutes),
                      "held-out loss": _xy(evaluations, "elapsed", "eval_loss", minutes)},
        "learning_rate": {"learning rate": _xy(run.train, "step", "learning_rate")},
        "throughput": {"tokens/s": _xy(run.train, "step", "tokens_per_second"),
                       "MFU": _xy(run.train, "step", "model_flops_utilization")},
        "data_wait": {"data-wait fraction": _xy(run.train, "step", "data_wait_fraction")},
        "scores": {},
        "objective": {},
    }
    for record in run.probes:
        metric = record.get("probe_metric", "score")
        name = f"probe {record.get('probe_task', '')} {metric}".replace("  ", " ")
        charts["scores"].setdefault(name, []).extend(_xy([record], "step", f"probe_{metric}"))
    for key in sorted({k for r in run.evaluations for k in r if k.startswith("eval_") and k != "eval_loss"}):
        if any(word in key for word in ("accuracy", "fraction")):
            charts["scores"][f"held-out {key[5:].replace('_', ' ')}"] = _xy(run.evaluations, "step", key)
    for key in sorted({k for r in run.train for k in r} - CORE_KEYS):
        charts["objective"][key.replace("_", " ")] = _xy(run.train, "step", key)
    return charts


CHARTS = {  # chart -> (title, x label, y label, log-scale y)
    "loss_tokens": ("Loss against tokens", "tokens", "loss", False),
    "loss_time": ("Loss against wall-clock time", "minutes of training", "loss", False),
    "learning_rate": ("Learning rate", "step", "learning rate", False),
    "throughput": ("Throughput", "step", "tokens/s | MFU", False),
    "data_wait": ("Time waiting for data", "step", "fraction of step time", False),
    "scores": ("Probe and held-out scores", "step", "score", False),
    "objective": ("The objective's own metrics", "step", "value", False),
}


def _panels(chart: str, runs_series: list[dict]) -> list[list[str]]:
    """Which series share a panel: losses share one, each throughput measure and objective metric gets its own."""
    names = list(dict.fromkeys(name for series in runs_series for name, points in series[chart].items() if points))
    if chart in ("throughput", "objective"):
        return [[name] for name in names]
    return [names] if names else []


def _figure(chart: str, runs: list[RunRecords], runs_series: list[dict], colours: list):
    """One chart as a matplotlib figure (None when no run has its data)."""
    import matplotlib.pyplot as plt

    panels = _panels(chart, runs_series)
    if not panels:
        return None
    title, x_label, y_label, _ = CHARTS[chart]
    columns = min(len(panels), 3)
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.6 * rows), squeeze=False)
    styles = {"held-out loss": dict(linestyle="--", marker="o", markersize=4)}
    for index, names in enumerate(panels):
        axis = axes[index // columns][index % columns]
        for run, series, colour in zip(runs, runs_series, colours):
            for position, name in enumerate(names):
                points = series[chart].get(name) or []
                if not points:
                    continue
                style = styles.get(name, dict(marker="o", markersize=4) if chart == "scores" or len(points) < 3 else {})
                if len(runs) == 1 and len(names) > 1:  # one run, several series: a colour per series
                    colour = plt.get_cmap("tab10")(position % 10)
                elif len(names) > 1:  # several runs: a colour per run, a line style per series
                    style = {**style, "linestyle": LINE_STYLES[position % len(LINE_STYLES)]}
                label = run.label if len(names) == 1 else f"{run.label}: {name}"
                axis.plot([p[0] for p in points], [p[1] for p in points], color=colour, label=label, linewidth=1.4,
                          **style)
        axis.set_xlabel(x_label)
        axis.set_ylabel(names[0] if len(names) == 1 and chart in ("throughput", "objective") else y_label)
        if len(panels) > 1:
            axis.set_title(names[0], fontsize=10)
        axis.grid(alpha=0.3)
        if len(runs) > 1 or len(names) > 1:
            axis.legend(fontsize=8)
    for index in range(len(panels), rows * columns):
        axes[index // columns][index % columns].axis("off")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


LINE_STYLES = ("-", "--", ":", "-.")


def curve_series(run: RunRecords) -> dict[str, dict[str, list]]:
    """{task: {series: [[size, median, min, max], ...]}} of the learning curves in the run's results (first metric)."""
    curves = {}
    for task, row in ((run.results or {}).get("tasks") or {}).items():
        metric = row["metrics"][0]
        for key, points in (row.get("curves") or {}).items():
            curves.setdefault(f"{task} ({metric}, {row['split']})", {})[CURVE_SERIES.get(key, key)] = [
                [p["size"], p["median"][metric], p["min"][metric], p["max"][metric]] for p in points]
    return curves


def _curve_figure(runs: list[RunRecords], runs_curves: list[dict]):
    """Learning curves: a panel per task, x the training examples (log scale), one line per model and baseline in
    its own colour (several runs: a line style per run), the seeds' min-max shaded."""
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(task for curves in runs_curves for task in curves))
    if not panels:
        return None
    palette = plt.get_cmap("tab10")
    names = list(CURVE_SERIES.values())
    columns = min(len(panels), 2)
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6.2 * columns, 4.2 * rows), squeeze=False)
    for index, task in enumerate(panels):
        axis = axes[index // columns][index % columns]
        for number, (run, curves) in enumerate(zip(runs, runs_curves)):
            for name, points in (curves.get(task) or {}).items():
                colour = palette(names.index(name) % 10 if name in names else 9)
                sizes = [p[0] for p in points]
                label = name if len(runs) == 1 else f"{run.label}: {name}"
                axis.plot(sizes, [p[1] for p in points], color=colour, marker="o", markersize=4, linewidth=1.4,
                          linestyle=LINE_STYLES[number % len(LINE_STYLES)], label=label)
                axis.fill_between(sizes, [p[2] for p in points], [p[3] for p in points], color=colour, alpha=0.15)
        axis.set_xscale("log")
        axis.set_xlabel("labelled training examples")
        axis.set_ylabel("score (median over seeds; min-max shaded)")
        axis.set_title(task, fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    for index in range(len(panels), rows * columns):
        axes[index // columns][index % columns].axis("off")
    figure.suptitle("Learning curves")
    figure.tight_layout()
    return figure


def _number(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 1000):
        return f"{int(value):,}"
    return f"{value:.{digits}g}"


def _scores(run: RunRecords) -> tuple[str, str]:
    """The probe and fine-tune cells: score (floor) per task and metric, from results.json, else the last probe."""
    probe, finetune = [], []
    for task, row in ((run.results or {}).get("tasks") or {}).items():
        for metric in row.get("metrics", []):
            if "probe" in row:
                floor = row.get("random_probe", {}).get("test", {}).get(metric)
                text = f"{task} {metric} {percent(row['probe']['test'][metric])} (floor {percent(floor)})"
                if "knn" in row["probe"]:
                    knn_floor = row.get("random_probe", {}).get("knn", {}).get("test", {}).get(metric)
                    text += f", kNN {percent(row['probe']['knn']['test'][metric])} (floor {percent(knn_floor)})"
                probe.append(text)
            if "finetune" in row:
                ft, floor = row["finetune"], row.get("random_finetune", {}).get("median", {}).get(metric)
                finetune.append(f"{task} {metric} {percent(ft['median'][metric])} ({percent(ft['min'][metric])}-"
                                f"{percent(ft['max'][metric])}; floor {percent(floor)})")
    if not probe and run.probes:
        last = run.probes[-1]
        metric = last.get("probe_metric", "score")
        probe.append(f"{last.get('probe_task', '')} {metric} {percent(last.get(f'probe_{metric}'))} "
                     f"(step {last['step']}, no floor: run sslnlp probe)")
    return "; ".join(probe) or "–", "; ".join(finetune) or "–"


def processes_of(summary: dict) -> str:
    """The processes a run trained on, in order: "2 -> 1 (step 8)" after a resume on another number of them."""
    resizes = summary.get("resizes") or []
    if not resizes:
        return str(summary.get("world_size", "–"))
    return str(resizes[0]["processes"][0]) + "".join(f" -> {resize['processes'][1]} (step {resize['step']})"
                                                     for resize in resizes)


def summary_rows(runs: list[RunRecords]) -> list[dict]:
    """The summary table: one row per run."""
    rows = []
    for run in runs:
        summary, last = run.summary, (run.train[-1] if run.train else {})
        final_eval = run.evaluations[-1].get("eval_loss") if run.evaluations else summary.get("eval_loss")
        probe, finetune = _scores(run)
        objective = (run.config.get("objective") or {}).get("name", "–")
        model = (run.config.get("model") or {}).get("model_type") or (run.config.get("model") or {}).get(
            "model_name_or_path") or "–"
        elapsed = summary.get("train_runtime", last.get("elapsed"))
        rows.append({"run": run.label, "objective": objective, "model": model,
                     "steps": summary.get("steps", last.get("step")), "tokens": summary.get("tokens", last.get("tokens")),
                     "minutes": None if elapsed is None else elapsed / 60,
                     "tokens/s": summary.get("tokens_per_second"), "MFU": summary.get("model_flops_utilization"),
                     "final training loss": summary.get("train_loss", last.get("loss")),
                     "final held-out loss": final_eval, "probe": probe, "fine-tune": finetune,
                     "resumed": run.resumes, "finished": bool(summary)})
        if any(other.summary.get("ema_decay") for other in runs):  # its held-out loss is then the average's
            rows[-1]["EMA decay"] = summary.get("ema_decay")
        if any(other.summary.get("resizes") for other in runs):  # resumed on another number of processes
            rows[-1]["processes"] = processes_of(summary)
    return rows


def _table_html(rows: list[dict]) -> str:
    formats = {"minutes": lambda v: _number(v, 3), "MFU": lambda v: "–" if v is None else f"{100 * v:.1f}%",
               "tokens/s": lambda v: _number(None if v is None else round(v)),
               "finished": lambda v: "yes" if v else "no (no summary.json)"}
    header = "".join(f"<th>{html.escape(key)}</th>" for key in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(formats.get(k, _number)(v) if not isinstance(v, str) else v)}</td>"
                                    for k, v in row.items()) + "</tr>" for row in rows)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.85em; margin-bottom: 2em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }}
figure {{ margin: 0; max-width: 100%; }}
img {{ max-width: 100%; }}
.note {{ color: #666; font-size: 0.85em; }}
</style></head>
<body>
<h1>{title}</h1>
<p class="note">Made by <code>sslnlp report</code> on {date} from {sources}. Scores x 100; floors are the same
architecture with random weights. The data behind every chart is in <code>report.json</code>.</p>
{table}
<div class="charts">
{figures}
</div>
</body></html>
"""


def write_loss_chart(run_dir: str | Path, output: str | Path, label: str | None = None) -> bool:
    """The loss-against-tokens chart of one run as a PNG (for the model card); False, writing nothing, without
    matplotlib or without a logged training window."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = read_run(run_dir, label or Path(run_dir).name)
    figure = _figure("loss_tokens", [run], [chart_series(run)], [plt.get_cmap("tab10")(0)]) if run.train else None
    if figure is None:
        return False
    figure.savefig(output, format="png", dpi=100)
    plt.close(figure)
    return True


def write_report(run_dirs: list[str | Path], output_dir: str | Path | None = None, *, labels: list[str] | None = None,
                 results: list[str | Path] = (), title: str | None = None) -> Path:
    """Write ``index.html`` (self-contained: the charts are embedded), one PNG per chart and ``report.json`` into
    ``output_dir`` (default: RUN_DIR/report for one run, else ./report); return the page's path.

    Args:
        run_dirs: output directories of sslnlp pretrain runs; several are overlaid, one colour each.
        output_dir: where to write.
        labels: the legend's names for the runs (default: their directory names).
        results: results.json files (or directories holding one) of sslnlp probe / finetune to use; by default each
            run's own, or one in a sibling directory whose model_name_or_path is the run.
        title: the page's title.
    """
    import datetime
    import io

    try:
        import matplotlib
    except ImportError:
        raise ReportError('sslnlp report draws its charts with matplotlib: pip install "sslnlp[report]"') from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [Path(p) for p in run_dirs]
    if not paths:
        raise ReportError("give at least one run directory")
    names = labels or _labels(paths)
    runs = [read_run(path, label, results) for path, label in zip(paths, names)]
    output = Path(output_dir) if output_dir else (paths[0] / "report" if len(paths) == 1 else Path("report"))
    output.mkdir(parents=True, exist_ok=True)
    runs_series = [chart_series(run) for run in runs]
    colours = [plt.get_cmap("tab10")(i % 10) for i in range(len(runs))]
    figures_html = []
    for chart in CHARTS:
        figure = _figure(chart, runs, runs_series, colours)
        if figure is None:
            continue
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110)
        plt.close(figure)
        (output / f"{chart}.png").write_bytes(buffer.getvalue())
        encoded = base64.b64encode(buffer.getvalue()).decode()
        figures_html.append(f'<figure id="{chart}"><img alt="{html.escape(CHARTS[chart][0])}" '
                            f'src="data:image/png;base64,{encoded}"></figure>')
    runs_curves = [curve_series(run) for run in runs]
    figure = _curve_figure(runs, runs_curves)
    if figure is not None:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110)
        plt.close(figure)
        (output / "learning_curves.png").write_bytes(buffer.getvalue())
        encoded = base64.b64encode(buffer.getvalue()).decode()
        figures_html.append(f'<figure id="learning_curves"><img alt="Learning curves" '
                            f'src="data:image/png;base64,{encoded}"></figure>')
    rows = summary_rows(runs)
    (output / "report.json").write_text(json.dumps(
        {"runs": [{"label": r.label, "path": str(r.path), "resumes": r.resumes} for r in runs], "summary": rows,
         "charts": {chart: {run.label: series[chart] for run, series in zip(runs, runs_series)} for chart in CHARTS},
         "curves": {run.label: curves for run, curves in zip(runs, runs_curves)}}, indent=1))
    page = output / "index.html"
    page.write_text(PAGE.format(
        title=html.escape(title or ("Run " + runs[0].label if len(runs) == 1 else f"{len(runs)} runs")),
        date=datetime.date.today().isoformat(), sources=", ".join(f"<code>{html.escape(str(p))}</code>" for p in paths),
        table=_table_html(rows), figures="\n".join(figures_html)))
    return page
