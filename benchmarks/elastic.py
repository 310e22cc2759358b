"""A run killed on 2 processes and finished on 1: is its held-out loss within the seed spread of runs never killed?

    python benchmarks/elastic.py                   # ~10 min on 2 cores; runs already finished are kept

recipes/tiny-cpu.yaml (the quick start: a 2-layer BERT on the Python documentation bundled with sslnlp, nothing
downloaded), dropout as the recipe has it, for --steps optimizer steps of 64 blocks (2 processes x 32, or 1 x 32 x
2 accumulated), on the two kinds of data:

  prepared   the corpus prepared once (sslnlp prepare): a resize continues with exactly the uninterrupted run's blocks
  streamed   the text tokenized as it streams: a resize skips the records of the slower shard (counted)

For each kind: --seeds uninterrupted 2-process runs (data.seed and training.seed together), and the first seed's run
killed with SIGKILL (the launcher and both workers) once its checkpoint at --kill-at is written, then finished on one
process with training.resume_from_checkpoint=auto. The table: held-out loss of every run, the killed run's distance
to its own uninterrupted seed and to the spread of seeds, and what the resume reported (OUTPUT/elastic.md).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny-cpu.yaml"
DDP = ROOT / "recipes" / "accelerate" / "cpu-2proc.yaml"
ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "ACCELERATE_USE_CPU": "1",
               "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def pretrain_command(processes: int, overrides: list[str]) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "sslnlp", "pretrain", str(RECIPE), *overrides]
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    return [accelerate, "launch", "--config_file", str(DDP), "--multi_gpu", "--main_process_port", "0",
            "-m", "sslnlp", "pretrain", str(RECIPE), *overrides]


def run(command: list[str]) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=ROOT, env=ENVIRONMENT, check=True, stdout=subprocess.DEVNULL)


def settings(output: Path, data: str | None, seed: int, steps: int, kill_at: int) -> list[str]:
    values = [f"output_dir={output}", f"training.max_steps={steps}", f"training.save_steps={kill_at}",
              f"training.seed={seed}", f"data.seed={seed}", "training.per_device_train_batch_size=32",
              f"evaluation.eval_steps={steps}"]
    return values + ([f"data.train_files={data}"] if data else [])


def killed_then_resumed(output: Path, overrides: list[str], kill_at: int) -> float:
    """The 2-process run killed once its checkpoint at ``kill_at`` is complete; finished on one process. Returns
    the seconds the kill came after the checkpoint."""
    checkpoint = output / "checkpoints" / f"checkpoint-{kill_at:08d}" / "loop_state.json"
    command = pretrain_command(2, overrides + ["training.resume_from_checkpoint=auto"])
    print("$", " ".join(command), "(killed after step", kill_at, ")", flush=True)
    process = subprocess.Popen(command, cwd=ROOT, env=ENVIRONMENT, stdout=subprocess.DEVNULL, start_new_session=True)
    while not checkpoint.is_file():
        if process.poll() is not None:
            raise SystemExit(f"the run ended (status {process.returncode}) before its step-{kill_at} checkpoint")
        time.sleep(0.01)
    written = time.monotonic()
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    run(pretrain_command(1, overrides + ["training.resume_from_checkpoint=auto"]))
    return time.monotonic() - written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=str(ROOT / "runs" / "bench-elastic"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--kill-at", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    arguments = parser.parse_args()
    output = Path(arguments.output)
    prepared = output / "prepared"
    if not (prepared / "manifest.json").is_file():
        run([sys.executable, "-m", "sslnlp", "prepare", str(RECIPE), "--output-dir", str(prepared),
             f"output_dir={output / 'tokenizer-run'}"])
    rows = []
    for kind, data in (("prepared", str(prepared)), ("streamed", None)):
        losses = {}
        for seed in arguments.seeds:
            folder = output / kind / f"seed{seed}"
            if not (folder / "summary.json").is_file():
                run(pretrain_command(2, settings(folder, data, seed, arguments.steps, arguments.kill_at)))
            losses[seed] = json.loads((folder / "summary.json").read_text())["eval_loss"]
        folder = output / kind / "killed"
        if not (folder / "summary.json").is_file():
            killed_then_resumed(folder, settings(folder, data, arguments.seeds[0], arguments.steps, arguments.kill_at),
                                arguments.kill_at)
        summary = json.loads((folder / "summary.json").read_text())
        spread = (min(losses.values()), max(losses.values()))
        rows.append({"data": kind, "seeds": losses, "spread": spread, "killed": summary["eval_loss"],
                     "minus_own_seed": summary["eval_loss"] - losses[arguments.seeds[0]],
                     "within_spread": spread[0] <= summary["eval_loss"] <= spread[1],
                     "resize": summary.get("resizes", [{}])[0]})
    lines = ["| data | uninterrupted, per seed | spread | killed at step "
             f"{arguments.kill_at} on 2, finished on 1 | minus its own seed | within the spread | resume |",
             "|---|---|---|---:|---:|---|---|"]
    for row in rows:
        resize = row["resize"]
        said = ("exact" if resize.get("exact") else
                f"{resize.get('records_skipped', '?')} records skipped, {resize.get('blocks_handed_over', '?')} blocks "
                f"and {resize.get('tokens_handed_over', '?')} tokens handed over")
        lines.append(f"| {row['data']} | {', '.join(f'{seed}: {loss:.4f}' for seed, loss in row['seeds'].items())} | "
                     f"{row['spread'][0]:.4f}-{row['spread'][1]:.4f} (median "
                     f"{statistics.median(row['seeds'].values()):.4f}) | {row['killed']:.4f} | "
                     f"{row['minus_own_seed']:+.4f} | {'yes' if row['within_spread'] else 'no'} | {said} |")
    table = "\n".join(lines)
    (output / "elastic.md").write_text(table + "\n")
    (output / "elastic.json").write_text(json.dumps(rows, indent=2, default=str))
    print(table)


if __name__ == "__main__":
    main()
