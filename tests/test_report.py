"""sslnlp report: the page and its charts from real tiny runs (one run, two overlaid, a resumed one) and the
console of a run (one line per evaluation, no library chatter, --quiet / --verbose, the full log in train.log)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_overrides

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def runs(corpus_file, wordpiece_dir, tmp_path_factory):
    """run: 20 steps (eval every 5, probe every 10, a checkpoint every 10) and its sslnlp probe results beside it;
    resumed: the same run resumed from its step-10 checkpoint over a copy of its metrics (steps 11-20 logged twice);
    other: another learning rate."""
    from test_evaluate import labelled_sets

    from sslnlp.config import EvaluateConfig, PretrainConfig, load_config
    from sslnlp.evaluation.probing import probe
    from sslnlp.training.loop import pretrain

    root = tmp_path_factory.mktemp("report")
    task = labelled_sets(root)["order"]

    def run(name, *extra):
        pretrain(load_config(PretrainConfig, None, tiny_overrides(root / name, wordpiece_dir, steps=20, **{
            "data.train_files": corpus_file, "training.logging_steps": 2, "evaluation.eval_steps": 5,
            "training.save_steps": 10, "training.save_total_limit": 3, "evaluation.probe_steps": 10,
            "evaluation.probe_task": json.dumps({"train_file": task.train_file})}) + list(extra)))

    run("run")
    (root / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(root / "run" / "checkpoints" / "checkpoint-00000010", root / "resumed" / "checkpoints" / "checkpoint-00000010")
    shutil.copy(root / "run" / "metrics.jsonl", root / "resumed" / "metrics.jsonl")  # as a killed run leaves it
    run("resumed", "training.resume_from_checkpoint=auto")
    run("other", "training.learning_rate=1e-3")
    probe(load_config(EvaluateConfig, None, [f"model_name_or_path={root / 'run'}", f"output_dir={root / 'run-eval'}",
                                             f"tasks={json.dumps([{'name': 'order', 'train_file': task.train_file}])}"]))
    return root


def load_report(page: Path) -> dict:
    return json.loads((page.parent / "report.json").read_text())


def test_one_run_renders_every_chart_with_its_series(runs, tmp_path):
    from sslnlp.publishing.report import CHARTS, write_report

    page = write_report([runs / "run"], tmp_path / "one")
    report = load_report(page)
    charts = {chart: series["run"] for chart, series in report["charts"].items()}
    metrics = [json.loads(line) for line in (runs / "run" / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in metrics if "loss" in r]
    assert [x for x, _ in charts["loss_tokens"]["training loss"]] == [r["tokens"] for r in windows]  # 10 windows
    assert [y for _, y in charts["loss_tokens"]["training loss"]] == [r["loss"] for r in windows]
    assert len(charts["loss_tokens"]["held-out loss"]) == 4 and len(charts["loss_time"]["held-out loss"]) == 4
    assert charts["loss_time"]["training loss"][-1][0] == pytest.approx(windows[-1]["elapsed"] / 60)
    assert [x for x, _ in charts["learning_rate"]["learning rate"]] == list(range(2, 21, 2))
    assert len(charts["throughput"]["tokens/s"]) == len(charts["throughput"]["MFU"]) == 10
    assert 0 < max(y for _, y in charts["throughput"]["MFU"]) < 1
    assert len(charts["data_wait"]["data-wait fraction"]) == 10
    assert [x for x, _ in charts["scores"]["probe order accuracy"]] == [10, 20]
    assert "held-out accuracy" in charts["scores"]
    html = page.read_text()
    for chart in CHARTS:
        if chart != "objective":  # MLM logs no metric of its own
            assert (page.parent / f"{chart}.png").stat().st_size > 5000 and f'id="{chart}"' in html
    assert html.count("data:image/png;base64,") == len(CHARTS) - 1  # self-contained: no file it links to
    row = report["summary"][0]
    assert row["steps"] == 20 and row["tokens"] == 20 * 8 * 32 and row["finished"]
    assert row["final held-out loss"] == json.loads((runs / "run" / "summary.json").read_text())["eval_loss"]
    results = json.loads((runs / "run-eval" / "results.json").read_text())["tasks"]["order"]
    # the sibling directory's results.json names this run: its probe and its random-weight floor are in the table
    assert f"order accuracy {100 * results['probe']['test']['accuracy']:.1f} (floor " \
           f"{100 * results['random_probe']['test']['accuracy']:.1f})" in row["probe"]


def test_runs_overlay_and_a_resumed_run_reads_as_one_line(runs, tmp_path):
    from sslnlp.publishing.report import write_report

    page = write_report([runs / "run", runs / "resumed", runs / "other"], tmp_path / "three")
    report = load_report(page)
    assert [r["label"] for r in report["runs"]] == ["run", "resumed", "other"]
    assert [r["resumes"] for r in report["runs"]] == [0, 1, 0]
    loss = report["charts"]["loss_tokens"]
    assert set(loss) == {"run", "resumed", "other"}
    # the resumed run's log has steps 1-20 then 11-20 again: it plots once per step, the same line as the
    # uninterrupted run (resume is exact)
    assert loss["resumed"]["training loss"] == loss["run"]["training loss"]
    assert loss["resumed"]["held-out loss"] == loss["run"]["held-out loss"]
    assert loss["other"]["training loss"] != loss["run"]["training loss"]
    assert [row["resumed"] for row in report["summary"]] == [0, 1, 0]
    assert "<td>resumed</td>" in page.read_text()


def test_the_report_command_and_its_errors(runs, tmp_path):
    result = subprocess.run([sys.executable, "-m", "sslnlp", "report", str(runs / "run"), str(runs / "other"),
                             "--output", str(tmp_path / "cli")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "cli" / "index.html").is_file() and str(tmp_path / "cli" / "index.html") in result.stderr
    missing = subprocess.run([sys.executable, "-m", "sslnlp", "report", str(tmp_path)], cwd=REPO, capture_output=True,
                             text=True, timeout=300)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1] == (f"sslnlp: error: {tmp_path}: no metrics.jsonl and no "
                                                       "results.json; give the output_dir of an sslnlp pretrain, "
                                                       "probe or finetune run")


def test_series_of_one_run_get_a_colour_each(runs):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.colors import to_hex

    from sslnlp.publishing.report import _figure, chart_series, read_run

    run = read_run(runs / "run")
    figure = _figure("scores", [run], [chart_series(run)], [(0.1, 0.2, 0.6, 1.0)])  # write_report: one per run
    lines = figure.axes[0].get_lines()
    assert len(lines) == 2 and to_hex(lines[0].get_color()) != to_hex(lines[1].get_color())


def cli_run(output_dir: Path, corpus_file: str, wordpiece_dir: str, *flags: str) -> subprocess.CompletedProcess:
    overrides = tiny_overrides(output_dir, wordpiece_dir, steps=10, **{
        "data.train_files": corpus_file, "training.save_steps": 5, "evaluation.eval_steps": 5})
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    environment.pop("TQDM_DISABLE", None)  # as a user runs it (not a terminal: progress comes as lines)
    result = subprocess.run([sys.executable, "-m", "sslnlp", "pretrain", *overrides, *flags], cwd=REPO,
                            env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_the_console_shows_the_run_not_the_libraries(corpus_file, wordpiece_dir, tmp_path):
    result = cli_run(tmp_path / "run", corpus_file, wordpiece_dir)
    console = result.stdout + result.stderr
    assert "accelerate" not in console and "Removed shared tensor" not in console  # two checkpoints were written
    assert "Writing model shards" not in console and "INFO" not in console
    lines = console.strip().splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("step ")] == ["step 5", "step 10"]
    assert lines[-2].startswith("pretrain: 100% (10/10 step)") and lines[-1].startswith("done: 10 steps, 2,560 tokens")
    assert len(lines) == 4, lines
    log = (tmp_path / "run" / "train.log").read_text()  # the full detail
    assert log.count("INFO accelerate.accelerator: [RANK 0] Saving current state") == 2
    assert "step 5: eval_loss=" in log and "done: 10 steps" in log


def test_quiet_and_verbose(corpus_file, wordpiece_dir, tmp_path):
    quiet = cli_run(tmp_path / "quiet", corpus_file, wordpiece_dir, "--quiet")
    assert quiet.stdout + quiet.stderr == ""
    assert "done: 10 steps" in (tmp_path / "quiet" / "train.log").read_text()
    verbose = cli_run(tmp_path / "verbose", corpus_file, wordpiece_dir, "--verbose")
    assert "INFO accelerate.accelerator: [RANK 0] Saving current state" in verbose.stderr
    assert "INFO sslnlp.training.loop: step 5: eval_loss=" in verbose.stderr


def test_the_page_renders_in_a_real_browser(runs, tmp_path):
    """Headless Chromium (Debian's chromium + chromium-driver, through selenium) opens the page: no error logged,
    every chart decodes, the table has a row per run. Skipped where the browser is not installed (CI)."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("needs Debian's chromium and chromium-driver")
    pytest.importorskip("selenium")
    sys.path.insert(0, str(REPO / "docs"))
    from screenshot import screenshot

    from sslnlp.publishing.report import write_report

    page = write_report([runs / "run", runs / "other"], tmp_path / "page")
    rendered = screenshot(page, tmp_path / "page.png")
    assert rendered["errors"] == [] and rendered["rows"] == 2
    assert len(rendered["images"]) == 6 and all(decoded and width > 400 for _, decoded, width in rendered["images"])
    assert (tmp_path / "page.png").stat().st_size > 50_000
