"""Crash safety, preemption, numerical faults, disk errors and token hygiene, through the real command line."""

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_overrides

from sslnlp.files import find_latest_checkpoint

REPO = Path(__file__).resolve().parents[1]


TEST_OBJECTIVES_CLI = str(Path(__file__).resolve().parent / "sslnlp_with_test_objectives.py")


def command(output_dir, tokenizer_dir, corpus_file, steps, **extra):
    overrides = tiny_overrides(output_dir, tokenizer_dir, steps=steps, **{"data.train_files": corpus_file, **extra})
    return [sys.executable, "-m", "sslnlp", "pretrain", *overrides]


def command_with_nan_at(steps_with_nan: str, *arguments, **extra):
    """The same run with the test suite's objective whose loss is NaN at the given steps."""
    objective = {"objective.name": "mlm_nonfinite", "objective.nonfinite_steps": f"[{steps_with_nan}]"}
    return [sys.executable, TEST_OBJECTIVES_CLI, *command(*arguments, **extra, **objective)[3:]]


def environment(**extra):
    return {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", **extra}


def run_to_end(arguments, **env):
    result = subprocess.run(arguments, cwd=REPO, env=environment(**env), capture_output=True, text=True, timeout=600)
    return result


def logged_steps(metrics: Path) -> int:
    try:
        return max((json.loads(line).get("step", 0) for line in metrics.read_text().splitlines() if line.strip()), default=0)
    except (OSError, json.JSONDecodeError):  # a line being written
        return 0


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_gives_the_uninterrupted_model(corpus_file, wordpiece_dir, tmp_path):
    steps, extra = 200, {"training.save_steps": 4, "training.save_total_limit": 2}
    reference = run_to_end(command(tmp_path / "reference", wordpiece_dir, corpus_file, steps, **extra))
    assert reference.returncode == 0, reference.stderr[-3000:]

    output = tmp_path / "killed"
    arguments = command(output, wordpiece_dir, corpus_file, steps, **extra, **{"training.resume_from_checkpoint": "auto"})
    rng = random.Random(0)
    kills, kills_during_save = 0, 0
    while kills < 6:
        process = subprocess.Popen(arguments, cwd=REPO, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        during_save = kills % 2 == 1  # every other kill lands while a checkpoint is being written
        target = logged_steps(output / "metrics.jsonl") + rng.randint(3, 25)
        while process.poll() is None:
            if during_save:
                hit = (output / "checkpoints").is_dir() and any((output / "checkpoints").glob(".tmp-checkpoint-*"))
            else:
                hit = logged_steps(output / "metrics.jsonl") >= target
            if hit:
                process.kill()
                kills += 1
                kills_during_save += during_save
                break
            time.sleep(0.001)
        process.wait()
        assert process.returncode in (0, -signal.SIGKILL), process.stderr.read().decode()[-3000:]
        if process.returncode == 0:
            break  # finished before the planned kill
    if not (output / "model.safetensors").is_file():
        final = run_to_end(arguments)
        assert final.returncode == 0, final.stderr[-3000:]
    assert kills >= 4 and kills_during_save >= 2, (kills, kills_during_save)
    # bit for bit the model of the run that was never interrupted
    assert (output / "model.safetensors").read_bytes() == (tmp_path / "reference" / "model.safetensors").read_bytes()
    assert find_latest_checkpoint(output).name == f"checkpoint-{steps:08d}"


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(corpus_file, wordpiece_dir, tmp_path):
    output = tmp_path / "run"
    arguments = command(output, wordpiece_dir, corpus_file, 100000, **{"training.save_steps": 0})
    process = subprocess.Popen(arguments, cwd=REPO, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = output / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 5):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    assert "stopped by a signal at step" in stderr and "training.resume_from_checkpoint=auto" in stderr
    checkpoint = find_latest_checkpoint(output)
    step = json.loads((checkpoint / "loop_state.json").read_text())["step"]
    assert step >= 5 and checkpoint.name == f"checkpoint-{step:08d}"
    # and it resumes from there
    resumed = run_to_end(command(output, wordpiece_dir, corpus_file, step + 3, **{"training.resume_from_checkpoint": "auto"}))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((output / "summary.json").read_text())["steps"] == step + 3


def test_nonfinite_steps_are_skipped_counted_and_bounded(corpus_file, wordpiece_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    result = run_to_end(command_with_nan_at("4,5", tmp_path / "nan", wordpiece_dir, corpus_file, 12))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "nan" / "summary.json").read_text())
    assert summary["nonfinite_steps"] == 2 and summary["steps"] == 12
    assert "step 4: non-finite loss or gradient, step skipped (1 so far, 1 in a row)" in result.stderr
    weights = load_file(tmp_path / "nan" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    records = [json.loads(line) for line in open(tmp_path / "nan" / "metrics.jsonl")]
    assert [r["step"] for r in records if "loss" in r and r["loss"] is None] == [4, 5]

    stopped = run_to_end(command_with_nan_at("5,6,7,8", tmp_path / "stop", wordpiece_dir, corpus_file, 12,
                                             **{"training.max_consecutive_nonfinite_steps": 3, "training.save_steps": 2}))
    assert stopped.returncode == 2
    assert stopped.stderr.strip().splitlines()[-1].startswith("sslnlp: error: 3 consecutive steps had a non-finite loss")
    # skipped steps leave the weights untouched, so the checkpoint of step 6 is still good; the error names it
    assert "the last good checkpoint is" in stopped.stderr and "checkpoint-00000006" in stopped.stderr
    assert find_latest_checkpoint(tmp_path / "stop").name == "checkpoint-00000006"


def test_disk_full_keeps_the_previous_checkpoint(corpus_file, wordpiece_dir, tmp_path):
    output = tmp_path / "run"
    first = run_to_end(command(output, wordpiece_dir, corpus_file, 10, **{"training.save_steps": 5}))
    assert first.returncode == 0, first.stderr[-3000:]
    size_limit = 20_000  # bytes per file: metrics and configs fit, the model weights do not

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (size_limit, size_limit))

    result = subprocess.run(command(output, wordpiece_dir, corpus_file, 20, **{"training.save_steps": 5,
                                                                               "training.resume_from_checkpoint": "auto"}),
                            cwd=REPO, env=environment(), capture_output=True, text=True, timeout=600,
                            preexec_fn=limit_file_size)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("sslnlp: error: cannot write the checkpoint of step 15"), last
    assert "checkpoint-00000010 is intact" in last
    assert find_latest_checkpoint(output).name == "checkpoint-00000010"
    assert not list((output / "checkpoints").glob(".tmp-*"))  # the partial write was cleaned up


def test_unwritable_output_dir_fails_before_work(corpus_file, wordpiece_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = run_to_end(command(blocker / "run", wordpiece_dir, corpus_file, 5))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"sslnlp: error: output_dir='{blocker / 'run'}' is not writable")
    assert "Traceback" not in result.stderr
