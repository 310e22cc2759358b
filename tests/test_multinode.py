"""Two machines simulated on this one (two `accelerate launch` commands of 1 process each, --num_machines 2), and
faults at scale: a rank killed (kill -9) or hung (SIGSTOP) is named by the survivor, which exits within a bounded time;
a resume then reproduces the uninterrupted run bit for bit."""

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ACCELERATE, tiny_overrides

REPO = Path(__file__).resolve().parents[1]
LAUNCH_CONFIG = REPO / "recipes" / "accelerate" / "cpu-2proc.yaml"
ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "ACCELERATE_USE_CPU": "1"}
STEPS, SAVE = 150, 10


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_machines(output_dir: Path, corpus_file, wordpiece_dir, *extra: str) -> list[subprocess.Popen]:
    """`accelerate launch` twice, as machine 0 and machine 1 of a 2-machine run (1 process each), on a free port."""
    port = free_port()
    overrides = tiny_overrides(output_dir, wordpiece_dir, steps=STEPS, **{"data.train_files": corpus_file,
                                                                          "training.save_steps": SAVE,
                                                                          "training.save_total_limit": 100})
    machines = []
    for machine in (0, 1):
        arguments = [ACCELERATE, "launch", "--config_file", str(LAUNCH_CONFIG), "--multi_gpu", "--num_machines", "2",
                     "--num_processes", "2", "--machine_rank", str(machine), "--main_process_ip", "127.0.0.1",
                     "--main_process_port", str(port), "-m", "sslnlp", "pretrain", *overrides, *extra]
        machines.append(subprocess.Popen(arguments, cwd=REPO, env=ENVIRONMENT, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True))
    return machines


def finish(machines: list[subprocess.Popen], timeout: float = 600) -> list[tuple[int, str]]:
    results = []
    for machine in machines:
        _, stderr = machine.communicate(timeout=timeout)
        results.append((machine.returncode, stderr))
    return results


def worker_of(launcher: subprocess.Popen) -> int:
    """The pid of the training process a launcher started (its child running sslnlp)."""
    for _ in range(600):
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                    command = (entry / "cmdline").read_bytes()
                except (OSError, IndexError, ValueError):
                    continue
                if parent == launcher.pid and b"sslnlp" in command:
                    return int(entry.name)
        time.sleep(0.1)
    raise AssertionError("no worker process found")


def wait_for(path: Path, machines: list[subprocess.Popen], timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline and all(m.poll() is None for m in machines), f"{path} never appeared"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def uninterrupted(corpus_file, wordpiece_dir, tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("multinode") / "uninterrupted"
    results = finish(start_machines(output_dir, corpus_file, wordpiece_dir))
    assert [code for code, _ in results] == [0, 0], [stderr[-3000:] for _, stderr in results]
    return output_dir


def test_two_machines_of_one_process_train_as_world_size_two_on_disjoint_shards(uninterrupted):
    summary = json.loads((uninterrupted / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == STEPS
    checkpoint = uninterrupted / "checkpoints" / f"checkpoint-{STEPS:08d}"
    states = [json.loads((checkpoint / f"rank_state_{rank}.json").read_text())["data"] for rank in (0, 1)]
    assert [sorted(state["shard_states"]) for state in states] == [["0"], ["1"]]
    assert all(state["shard_count"] == 2 and state["blocks_consumed"] >= STEPS * 8 for state in states)


@pytest.mark.parametrize("lost_machine", [1, 0])
def test_a_machine_killed_mid_run_is_named_and_a_resume_reproduces_the_run(uninterrupted, corpus_file, wordpiece_dir,
                                                                           tmp_path, lost_machine):
    """kill -9 of one machine's training process after the step-30 checkpoint: the other machine's process exits
    within seconds, naming the lost rank (its launcher sees only its own process: without the heartbeat it would
    report the survivor as the failure); both launches resumed with resume_from_checkpoint=auto end with the
    uninterrupted run's weights, byte for byte."""
    output_dir = tmp_path / "run"
    machines = start_machines(output_dir, corpus_file, wordpiece_dir)
    wait_for(output_dir / "checkpoints" / "checkpoint-00000030", machines)
    os.kill(worker_of(machines[lost_machine]), signal.SIGKILL)
    killed = time.time()
    survivor = machines[1 - lost_machine]
    _, stderr = survivor.communicate(timeout=120)
    waited = time.time() - killed
    machines[lost_machine].communicate(timeout=120)
    print(f"machine {1 - lost_machine} exited {waited:.1f} s after machine {lost_machine}'s process was killed")
    assert survivor.returncode != 0 and waited < 30, (waited, stderr[-3000:])
    named = [line for line in stderr.splitlines() if "sslnlp: error:" in line]
    assert named and f"lost rank {lost_machine} (" in named[0], named or stderr[-3000:]
    assert not (output_dir / "model.safetensors").exists()
    results = finish(start_machines(output_dir, corpus_file, wordpiece_dir, "training.resume_from_checkpoint=auto"))
    assert [code for code, _ in results] == [0, 0], [stderr[-3000:] for _, stderr in results]
    assert "resumed from" in results[0][1]
    assert (output_dir / "model.safetensors").read_bytes() == (uninterrupted / "model.safetensors").read_bytes()


def test_a_hung_machine_is_named_within_the_peer_timeout(corpus_file, wordpiece_dir, tmp_path):
    """SIGSTOP (a hung machine or a cut network: no socket closes, so no collective fails) on machine 1: machine 0
    exits once machine 1's heartbeat has been still for training.peer_timeout (5 s), instead of waiting in the
    collective for gloo's 30 minutes."""
    output_dir = tmp_path / "run"
    machines = start_machines(output_dir, corpus_file, wordpiece_dir, "training.peer_timeout=5")
    wait_for(output_dir / "checkpoints" / "checkpoint-00000010", machines)
    hung = worker_of(machines[1])
    os.kill(hung, signal.SIGSTOP)
    stopped = time.time()
    try:
        _, stderr = machines[0].communicate(timeout=120)
        waited = time.time() - stopped
    finally:
        os.kill(hung, signal.SIGKILL)
        machines[1].communicate(timeout=120)
    print(f"machine 0 exited {waited:.1f} s after machine 1's process was stopped")
    # the stopped process's last beat, and the survivor's last look at it, can precede the SIGSTOP by up to a beat
    assert machines[0].returncode != 0 and 5 - 1 <= waited < 25, (waited, stderr[-3000:])
    assert "lost rank 1 (" in stderr and "no heartbeat for 5 s" in stderr, stderr[-3000:]


def test_an_output_dir_that_is_not_shared_between_machines_is_refused_at_start(corpus_file, wordpiece_dir, tmp_path):
    """Each machine with its own disk (here: two different paths): without the check both train to the end and every
    checkpoint lacks rank 1's part (measured before the check); now both stop at start, naming the rank that cannot
    see rank 0's files."""
    port = free_port()
    machines = []
    for machine in (0, 1):
        overrides = tiny_overrides(tmp_path / f"disk{machine}" / "run", wordpiece_dir, steps=STEPS,
                                   **{"data.train_files": corpus_file})
        arguments = [ACCELERATE, "launch", "--config_file", str(LAUNCH_CONFIG), "--multi_gpu", "--num_machines", "2",
                     "--num_processes", "2", "--machine_rank", str(machine), "--main_process_ip", "127.0.0.1",
                     "--main_process_port", str(port), "-m", "sslnlp", "pretrain", *overrides]
        machines.append(subprocess.Popen(arguments, cwd=REPO, env=ENVIRONMENT, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True))
    results = finish(machines, timeout=300)
    assert all(code != 0 for code, _ in results)
    for _, stderr in results:
        assert "is not one directory for every process: rank 1 cannot see what rank 0 wrote there" in stderr, stderr[-2000:]
    assert not (tmp_path / "disk0" / "run" / "checkpoints").exists()


def test_the_slurm_template_starts_one_launch_per_node_that_train_as_one_run(corpus_file, wordpiece_dir, tmp_path):
    """recipes/slurm/pretrain.sbatch under a stand-in for SLURM on this machine: `srun` starts the script's command
    once per node with SLURM_NODEID set (what srun --ntasks-per-node=1 does), `scontrol` lists the nodes. Two nodes
    of one process each (the CPU stand-ins for GPUs) meet at node 0 and train one run."""
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "scontrol").write_text("#!/bin/bash\nprintf 'localhost\\nlocalhost\\n'\n")
    (shims / "srun").write_text("#!/bin/bash\nwhile [[ $1 == -* ]]; do shift; done\npids=()\n"
                                "for node in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_NODEID=$node \"$@\" & pids+=($!); done\n"
                                "status=0\nfor pid in \"${pids[@]}\"; do wait $pid || status=$?; done\nexit $status\n")
    for shim in shims.iterdir():
        shim.chmod(0o755)
    environment = {**ENVIRONMENT, "PATH": f"{shims}:{Path(ACCELERATE).parent}:{os.environ['PATH']}",
                   "SLURM_JOB_NODELIST": "localhost", "SLURM_NNODES": "2", "SLURM_CPUS_PER_TASK": "1",
                   "GPUS_PER_NODE": "1", "MAIN_PORT": str(free_port())}
    output_dir = tmp_path / "run"
    overrides = tiny_overrides(output_dir, wordpiece_dir, steps=10, **{"data.train_files": corpus_file})
    result = subprocess.run(["bash", "recipes/slurm/pretrain.sbatch", "recipes/tiny-cpu.yaml", *overrides], cwd=REPO,
                            env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 10
