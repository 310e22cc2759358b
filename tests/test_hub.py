"""Pushing to the Hub, against a local server that speaks the Hub's upload protocol (tests/hub_server.py).

Byte-identical files that load with from_pretrained; a model card whose metadata parses; retries after server
failures; a Hub that is down leaves training alone; under a 2-process `accelerate launch` only rank 0 pushes.
"""

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ACCELERATE, tiny_overrides
from hub_server import HubServer, unused_port_url

from sslnlp.config import ConfigError, PretrainConfig, load_config
from sslnlp.publishing.card import model_card
from sslnlp.publishing.hub import published_files
from sslnlp.training.loop import pretrain

TOKEN = "hf_sslnlpTestToken0123456789abcdef"
REPO = Path(__file__).resolve().parents[1]
FAST = {"training.mixed_precision": "no", "training.peak_flops": 1e12}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """2 shared cores: one intra-op thread keeps these tiny runs fast (and the launch test sets OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def point_hub_at(monkeypatch, url: str) -> None:
    """What setting HF_ENDPOINT / HF_TOKEN before starting Python does (conftest made this process offline)."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the classic LFS path (hf_xet is not installed either)


@pytest.fixture
def hub(monkeypatch):
    with HubServer() as server:
        point_hub_at(monkeypatch, server.url)
        yield server


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def train(corpus_file, tokenizer_dir, output_dir, steps, **extra):
    overrides = tiny_overrides(output_dir, tokenizer_dir, steps=steps, **{"data.train_files": corpus_file, **FAST, **extra})
    return pretrain(load_config(PretrainConfig, None, overrides))


@pytest.fixture(scope="module")
def finished_run(corpus_file, wordpiece_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("finished") / "run"
    train(corpus_file, wordpiece_dir, output_dir, steps=4, **{"training.save_steps": 2})
    return output_dir


def test_config_checks_and_model_card_metadata():
    with pytest.raises(ConfigError, match="hub.push_to_hub=true needs a repository: set hub.hub_model_id"):
        load_config(PretrainConfig, None, ["max_steps=1", "hub.push_to_hub=true"]).check()
    with pytest.raises(ConfigError, match="hub.hub_strategy='often' is not valid; choose one of end, every_save"):
        load_config(PretrainConfig, None, ["max_steps=1", "hub.hub_strategy=often"]).check()
    with pytest.raises(ConfigError, match="is not a Hub repository id"):
        load_config(PretrainConfig, None, ["max_steps=1", "push_to_hub=true", "hub_model_id=me/a b"]).check()

    config = load_config(PretrainConfig, None, ["objective.name=clm", "data.train_files=wikitext", "data.max_seq_length=64",
                                                "training.per_device_train_batch_size=4", "training.learning_rate=3e-4",
                                                "hub.hub_language=[fr]", "training.max_steps=10"])
    results = {"model_name_or_path": "runs/x", "tasks": {"sst2": {
        "metrics": ["accuracy"], "split": "validation", "problem_type": "classification",
        "probe": {"test": {"accuracy": 0.71}}, "random_probe": {"test": {"accuracy": 0.55}},
        "finetune": {"median": {"accuracy": 0.8}, "min": {"accuracy": 0.79}, "max": {"accuracy": 0.82}}}}}
    card = model_card(repo_id="me/tiny-gpt", summary={"steps": 10, "tokens": 2560, "eval_loss": 4.5,
                                                      "eval_perplexity": 90.0, "eval_accuracy": 0.2, "train_loss": 4.7},
                      config=config, model_config={"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]},
                      tokenizer_config={}, metrics=[{"step": 10, "loss": 4.7, "tokens": 2560}], results=results)
    metadata = front_matter(card)
    assert metadata["pipeline_tag"] == "text-generation" and metadata["library_name"] == "transformers"
    assert metadata["language"] == ["fr"] and metadata["license"] == "apache-2.0" and metadata["datasets"] == ["wikitext"]
    assert "sslnlp" in metadata["tags"] and "gpt2" in metadata["tags"]
    (index,) = metadata["model-index"]
    assert index["name"] == "tiny-gpt"
    held_out, probe, finetune = index["results"]
    assert held_out["task"]["type"] == "text-generation"
    assert {m["type"]: m["value"] for m in held_out["metrics"]} == {"loss": 4.5, "perplexity": 90.0, "accuracy": 0.2}
    assert probe["dataset"]["config"] == "sst2" and probe["metrics"][0]["value"] == 0.71
    assert finetune["metrics"][0]["value"] == 0.8
    assert 'pipeline("text-generation", model="me/tiny-gpt")' in card and "| sst2 | accuracy |" in card
    # every recipe value comes from the typed config: no dash where a setting exists
    assert "| objective | next-token prediction |" in card and "peak learning rate 0.0003" in card
    assert "| batch | 4 blocks of 64 tokens per step (4 per device x 1 accumulation x 1 processes) |" in card
    assert "| seed | 42 |" in card and "warmup 0.06 of the budget" in card


def test_background_pusher_supersedes_queued_snapshots_and_never_blocks(monkeypatch, tmp_path):
    """A slow (here: hung) network: submit returns at once, a newer snapshot replaces a queued one (no pile-up on
    disk), and wait() gives up after its timeout, reporting what is still pending."""
    import threading

    import sslnlp.publishing.hub as hub_module

    started, release, uploaded = threading.Event(), threading.Event(), []

    def upload(folder, *args, **kwargs):
        started.set()
        release.wait(10)
        uploaded.append(Path(folder).name)
        return "url"

    monkeypatch.setattr(hub_module, "prepare_repo", lambda *args, **kwargs: None)
    monkeypatch.setattr(hub_module, "upload_snapshot", upload)
    pusher = hub_module.BackgroundPusher("me/x", retry_delay=0)
    folders = [tmp_path / name for name in ("a", "b", "c")]
    for folder in folders:
        folder.mkdir()
        pusher.submit(folder, message=folder.name, cleanup=True)
        assert started.wait(10)  # "a" is uploading from here on
    pending = pusher.wait(timeout=0.2)  # "a" hangs: nothing finished
    assert sorted((o["message"], o["status"]) for o in pending) == [("a", "pending"), ("b", "superseded"), ("c", "pending")]
    assert not folders[1].exists()  # the superseded snapshot is gone from disk at once
    release.set()
    outcomes = pusher.wait(timeout=10)
    assert [(o["message"], o["status"]) for o in outcomes] == [("b", "superseded"), ("a", "pushed"), ("c", "pushed")]
    assert uploaded == ["a", "c"] and not any(folder.exists() for folder in folders)
    pusher.close()


def test_push_command_sends_byte_identical_files_that_load(finished_run, hub, tmp_path, capsys):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from sslnlp.files import find_latest_checkpoint
    from sslnlp.cli import main

    main(["push", str(finished_run), "me/tiny", "--private", "--revision", "v1", "--with-checkpoint"])
    assert "pushed" in capsys.readouterr().out
    assert hub.creations == [{"repo": "me/tiny", "private": True, "status": 200}]
    stored = hub.files("me/tiny", revision="v1")
    local = {path.name: path.read_bytes() for path in published_files(finished_run)}
    assert {"model.safetensors", "config.json", "tokenizer.json", "metrics.jsonl", "README.md"} <= set(local)
    checkpoint = find_latest_checkpoint(finished_run)
    local.update({f"last-checkpoint/{p.name}": p.read_bytes() for p in checkpoint.iterdir() if p.is_file()})
    assert set(stored) == set(local) | {"loss.png"}  # and the loss chart the card embeds (kept in the run too)
    assert all(stored[name] == content for name, content in local.items())  # byte-identical, card included
    assert stored["loss.png"] == (finished_run / "loss.png").read_bytes() and stored["loss.png"].startswith(b"\x89PNG")
    assert "![Training and held-out loss against tokens](loss.png)" in stored["README.md"].decode()
    assert hashlib.sha256(local["model.safetensors"]).hexdigest() in hub.lfs_objects  # went through the LFS path

    downloaded = hub.write_repo("me/tiny", tmp_path / "from-hub", revision="v1")
    model = AutoModelForMaskedLM.from_pretrained(downloaded)
    original = AutoModelForMaskedLM.from_pretrained(finished_run)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), original.state_dict().values()))
    assert AutoTokenizer.from_pretrained(downloaded)("a cat")["input_ids"] == AutoTokenizer.from_pretrained(finished_run)("a cat")["input_ids"]

    metadata = front_matter(stored["README.md"].decode())
    summary = json.loads((finished_run / "summary.json").read_text())
    assert metadata["pipeline_tag"] == "fill-mask" and metadata["library_name"] == "transformers"
    (held_out,) = metadata["model-index"][0]["results"]
    assert {m["type"]: m["value"] for m in held_out["metrics"]}["loss"] == round(summary["eval_loss"], 4)
    card = stored["README.md"].decode()
    assert 'pipeline("fill-mask", model="me/tiny", revision="v1")' in card and "last-checkpoint" in card

    api_requests = [r for r in hub.requests if r["path"].startswith("/api/") and "agent-harnesses" not in r["path"]]
    assert api_requests and all(r["authorization"] == f"Bearer {TOKEN}" for r in api_requests)  # HF_TOKEN was used
    for path in finished_run.rglob("*"):  # and never written down
        assert not path.is_file() or TOKEN.encode() not in path.read_bytes(), path


def test_failed_pushes_are_retried_and_the_run_resumes_from_the_hub(hub, corpus_file, wordpiece_dir, tmp_path):
    hub.fail("/api/repos/create", times=2)
    hub.fail("/commit/", times=1)
    hub_settings = {"hub.push_to_hub": "true", "hub.hub_model_id": "me/tiny-ckpt", "hub.hub_strategy": "checkpoint",
                    "hub.hub_retry_delay": 0.01, "training.save_steps": 3}
    summary = train(corpus_file, wordpiece_dir, tmp_path / "run", steps=6, **hub_settings)
    pushes = summary["hub_pushes"]
    assert [p["status"] for p in pushes] == ["pushed", "pushed"], pushes
    assert pushes[0]["attempts"] == 4  # two failed creations and one failed commit, then success
    assert [c["summary"] for c in hub.commits] == ["Checkpoint at step 3 (with training state)",
                                                   "End of training: step 6, 1,536 tokens"]
    assert sum(r["status"] == 503 for r in hub.requests) == 3 and len(hub.creations) == 1
    stored = hub.files("me/tiny-ckpt")
    assert stored["model.safetensors"] == (tmp_path / "run" / "model.safetensors").read_bytes()
    assert json.loads(stored["last-checkpoint/loop_state.json"])["step"] == 6
    assert not (tmp_path / "run" / "hub-staging").exists()  # snapshots are removed once uploaded

    # the pushed training state resumes: what the Hub holds is all a new machine needs (with the same data)
    downloaded = hub.write_repo("me/tiny-ckpt", tmp_path / "from-hub")
    resumed = train(corpus_file, str(downloaded), tmp_path / "resumed", steps=8,
                    **{"training.resume_from_checkpoint": str(downloaded / "last-checkpoint")})
    assert resumed["steps"] == 8
    assert [r["step"] for r in map(json.loads, open(tmp_path / "resumed" / "metrics.jsonl")) if "loss" in r] == [7, 8]


def test_a_hub_that_is_down_does_not_stop_training(monkeypatch, corpus_file, wordpiece_dir, tmp_path, caplog):
    point_hub_at(monkeypatch, unused_port_url())
    caplog.set_level(logging.WARNING, logger="sslnlp.publishing.hub")
    summary = train(corpus_file, wordpiece_dir, tmp_path / "run", steps=3, **{
        "hub.push_to_hub": "true", "hub.hub_model_id": "me/unreachable", "hub.hub_max_attempts": 2,
        "hub.hub_retry_delay": 0.01})
    assert summary["steps"] == 3 and (tmp_path / "run" / "model.safetensors").is_file()
    (push,) = summary["hub_pushes"]
    assert push["status"] == "failed" and push["attempts"] == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("to me/unreachable failed after 2 attempts: ConnectError" in w and "training goes on" in w
               for w in warnings), warnings
    assert any("was NOT pushed to me/unreachable" in w for w in warnings), warnings


def test_only_rank_zero_pushes_under_two_process_launch(corpus_file, wordpiece_dir, tmp_path):
    with HubServer() as hub:
        overrides = tiny_overrides(tmp_path / "run", wordpiece_dir, steps=4, **{
            "data.train_files": corpus_file, **FAST, "training.per_device_train_batch_size": 4,
            "training.save_steps": 2, "hub.push_to_hub": "true", "hub.hub_model_id": "me/tiny-ddp",
            "hub.hub_strategy": "every_save", "hub.hub_retry_delay": 0.01})
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "ACCELERATE_USE_CPU": "1",
                       "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"}
        command = [ACCELERATE, "launch", "--config_file", str(REPO / "recipes/accelerate/cpu-2proc.yaml"), "--multi_gpu",
                   "-m", "sslnlp", "pretrain", *overrides]
        result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["world_size"] == 2
    assert hub.creations == [{"repo": "me/tiny-ddp", "private": False, "status": 200}]
    assert [c["summary"] for c in hub.commits] == ["Checkpoint at step 2", "End of training: step 4, 1,024 tokens"]
    sslnlp_requests = [r for r in hub.requests if "sslnlp/" in r["user_agent"]]
    assert sslnlp_requests and all("sslnlp-process/0" in r["user_agent"] for r in sslnlp_requests)
    assert hub.files("me/tiny-ddp")["model.safetensors"] == (tmp_path / "run" / "model.safetensors").read_bytes()


def test_hub_token_is_used_for_real_pushes_and_written_nowhere(corpus_file, wordpiece_dir, tmp_path):
    """A real run pushes (checkpoints with their training state, then the final model) to the local Hub server with
    HF_TOKEN set; the token must reach the server and appear in no file of the run directory, no pushed file, no
    log line (stdout and stderr of the command) and no metric."""
    secret = "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0123"
    with HubServer() as hub:
        overrides = tiny_overrides(tmp_path / "run", wordpiece_dir, steps=6, **{
            "data.train_files": corpus_file, **FAST, "training.save_steps": 3, "hub.push_to_hub": "true",
            "hub.hub_model_id": "me/secret-check", "hub.hub_strategy": "checkpoint", "hub.hub_retry_delay": 0.01})
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_ENDPOINT": hub.url,
                       "HF_TOKEN": secret, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"}
        result = subprocess.run([sys.executable, "-m", "sslnlp", "pretrain", *overrides], cwd=REPO, env=environment,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-4000:]
        pushed = hub.files("me/secret-check")
    assert [c["summary"] for c in hub.commits] == ["Checkpoint at step 3 (with training state)",
                                                   "End of training: step 6, 1,536 tokens"]
    assert any(r["authorization"] == f"Bearer {secret}" for r in hub.requests)  # the token was really used
    assert "model.safetensors" in pushed and "last-checkpoint/loop_state.json" in pushed
    assert secret not in result.stdout + result.stderr and "hub: pushed" in result.stderr
    for name, content in pushed.items():
        assert secret.encode() not in content, name
    run_files = [path for path in (tmp_path / "run").rglob("*") if path.is_file()]
    assert any(path.name == "metrics.jsonl" for path in run_files)
    for path in run_files:
        assert secret.encode() not in path.read_bytes(), path
