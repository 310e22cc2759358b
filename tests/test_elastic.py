"""Launch tier: resuming on another number of processes (sslnlp.training.elastic), with the real launcher.

Prepared shards, DDP and FSDP: a 2-process run resumed on 1 process, and that run resumed on 2 again, ends with the
weights of the run never interrupted (exported: their average, training.ema_decay, whose FSDP shards are cut again
for the new number of processes), within TOLERANCE: the gradient of a step is summed in another order (an
all-reduce of two halves against two accumulated micro-batches), which changes fp32 sums in their last bits (about
1e-7 relative); Adam carries that through the remaining steps. Blocks, masks and learning rates are the same
exactly. Streamed text: the stated guarantee (no document read twice; buffered blocks and carried tokens handed
over; the records of slower shards skipped, counted) is checked by counting every document's tokens.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ACCELERATE, tiny_overrides
from safetensors.torch import load_file

import textgen
from sslnlp import prepare
from sslnlp.config import PretrainConfig, load_config

REPO = Path(__file__).resolve().parents[1]
DDP = REPO / "recipes" / "accelerate" / "cpu-2proc.yaml"
FSDP = REPO / "recipes" / "accelerate" / "fsdp-cpu-2proc.yaml"
ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "ACCELERATE_USE_CPU": "1"}
STEPS = 16
TOLERANCE = 1e-6  # largest absolute difference of any weight (measured: 0 under DDP, 6e-8 under FSDP)
NO_DROPOUT = ("{hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64, "
              "max_position_embeddings: 64, hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}")


def command(engine: Path | None, processes: int, overrides: list[str]) -> list[str]:
    """``sslnlp pretrain`` on ``processes`` CPU processes: one plain process (engine None), or accelerate launch."""
    if engine is None:
        return [sys.executable, "-m", "sslnlp", "pretrain", *overrides]
    extra = ["--multi_gpu"] if engine == DDP else []  # see recipes/accelerate/fsdp-cpu-2proc.yaml
    return [ACCELERATE, "launch", "--config_file", str(engine), *extra, "--num_processes", str(processes),
            "--main_process_port", "0", "-m", "sslnlp", "pretrain", *overrides]


def launch(engine: Path | None, processes: int, overrides: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command(engine, processes, overrides), cwd=REPO, env=ENVIRONMENT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def settings(output_dir: Path, source, tokenizer_dir, steps: int = STEPS, **extra) -> list[str]:
    return tiny_overrides(output_dir, tokenizer_dir, steps=steps, **{
        "data.train_files": str(source), "model.config_overrides": NO_DROPOUT, "training.mixed_precision": "no",
        "training.save_steps": 4, "training.save_total_limit": 10, "training.ema_decay": 0.9, **extra})


def resume_from(run: Path, step: int, into: Path) -> None:
    (into / "checkpoints").mkdir(parents=True)
    name = f"checkpoint-{step:08d}"
    shutil.copytree(run / "checkpoints" / name, into / "checkpoints" / name)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model.safetensors")


def largest_difference(one: Path, other: Path) -> float:
    first, second = weights(one), weights(other)
    assert first.keys() == second.keys()
    return max(float((first[name] - second[name]).abs().max()) for name in first)


def per_step(run: Path, key: str) -> dict[int, float]:
    """step -> the last value of ``key`` logged for it (a resumed run logs the steps after its checkpoint again)."""
    values = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if key in record:
            values[record["step"]] = record[key]
    return values


def positions(run: Path, step: int) -> list[int]:
    checkpoint = run / "checkpoints" / f"checkpoint-{step:08d}"
    return [json.loads(path.read_text())["data"]["shard_states"]["0"]["position"]
            for path in sorted(checkpoint.glob("rank_state_*.json"))]


@pytest.fixture(scope="module")
def prepared_dir(wordpiece_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("elastic-prepared")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": text}) + "\n" for text in textgen.documents(600, seed=1)))
    config = load_config(PretrainConfig, None, tiny_overrides(root / "run", wordpiece_dir,
                                                              **{"data.train_files": str(corpus)}))
    prepare(config, root / "shards", num_proc=1, shard_tokens=2048)
    return root / "shards"


@pytest.fixture(scope="module")
def uninterrupted(prepared_dir, wordpiece_dir, tmp_path_factory):
    """engine -> a 2-process run of 16 steps (8 blocks per device: 16 a step) under that engine, launched once."""
    runs = {}

    def run(engine: Path) -> Path:
        if engine not in runs:
            runs[engine] = tmp_path_factory.mktemp("elastic-whole") / "whole"
            launch(engine, 2, settings(runs[engine], prepared_dir, wordpiece_dir))
        return runs[engine]

    return run


@pytest.fixture(scope="module", params=["ddp", "fsdp"])
def chain(request, uninterrupted, prepared_dir, wordpiece_dir, tmp_path_factory) -> tuple[str, Path, Path]:
    """The uninterrupted 2-process run; its step-8 checkpoint resumed on 1 process to the end (``one``); that run's
    step-12 checkpoint resumed on 2 processes to the end (``two``)."""
    engine = {"ddp": DDP, "fsdp": FSDP}[request.param]
    whole, root = uninterrupted(engine), tmp_path_factory.mktemp(f"elastic-{request.param}")
    resume_from(whole, 8, root / "one")
    one = settings(root / "one", prepared_dir, wordpiece_dir, **{"training.resume_from_checkpoint": "auto"})
    launch(None if engine == DDP else engine, 1, one)  # data parallel on one process is a plain process
    resume_from(root / "one", 12, root / "two")
    launch(engine, 2, settings(root / "two", prepared_dir, wordpiece_dir, **{"training.resume_from_checkpoint": "auto"}))
    return request.param, whole, root


def test_a_run_resumed_on_fewer_then_more_processes_ends_as_the_uninterrupted_run(chain):
    engine, whole_run, root = chain
    whole = json.loads((whole_run / "summary.json").read_text())
    one = json.loads((root / "one" / "summary.json").read_text())
    two = json.loads((root / "two" / "summary.json").read_text())
    assert (whole["world_size"], one["world_size"], two["world_size"]) == (2, 1, 2)
    # the global batch kept by accumulation, and said so
    assert one["resizes"] == [{"step": 8, "engine": "FSDP (sharded)" if engine == "fsdp" else "data parallel",
                               "processes": [2, 1], "workers": [0, 0], "per_device_train_batch_size": [8, 8],
                               "gradient_accumulation_steps": [1, 2], "global_batch_blocks": 16, "data": "prepared",
                               "exact": True, "position": 8 * 16}]
    assert two["resizes"][-1]["processes"] == [1, 2] and two["resizes"][-1]["gradient_accumulation_steps"] == [2, 1]
    from sslnlp.publishing.report import read_run, summary_rows

    rows = summary_rows([read_run(whole_run), read_run(root / "two")])  # the run report says it too
    assert [row["processes"] for row in rows] == ["2", "2 -> 1 (step 8) -> 2 (step 12)"]
    assert one["tokens"] == two["tokens"] == whole["tokens"] == STEPS * 16 * 32
    # the blocks: one position for the whole run, the same at every checkpoint
    assert positions(root / "one", 12) == [12 * 16] and positions(root / "one", 16) == [16 * 16]
    assert positions(root / "two", 16) == positions(whole_run, 16) == [16 * 16, 16 * 16]
    # the learning rate of every step exactly, the loss of every step to fp32 reduction order
    rates, losses = per_step(whole_run, "learning_rate"), per_step(whole_run, "loss")
    for run, first in (("one", 9), ("two", 13)):
        resumed = per_step(root / run, "learning_rate")
        assert sorted(resumed) == list(range(first, STEPS + 1)) and all(resumed[s] == rates[s] for s in resumed)
        resumed = per_step(root / run, "loss")
        assert all(abs(resumed[s] - losses[s]) < 1e-4 * losses[s] for s in resumed), (resumed, losses)
        difference = largest_difference(root / run, whole_run)
        print(engine, run, "largest weight difference", difference)
        assert difference < TOLERANCE, (engine, run, difference)


def test_a_truncated_file_of_a_checkpoint_is_named_in_one_line(chain, prepared_dir, wordpiece_dir, tmp_path):
    """A model file (data parallel) or one rank's optimizer shard (sharded FSDP) cut short: refused before loading."""
    engine, whole, _ = chain
    resume_from(whole, 8, tmp_path / "damaged")
    checkpoint = tmp_path / "damaged" / "checkpoints" / "checkpoint-00000008"
    damaged = (checkpoint / "model.safetensors" if engine == "ddp"
               else sorted((checkpoint / "optimizer_0").glob("*.distcp"))[-1])
    damaged.write_bytes(damaged.read_bytes()[:100])
    result = subprocess.run(command(None if engine == "ddp" else FSDP, 1, settings(
        tmp_path / "damaged", prepared_dir, wordpiece_dir, **{"training.resume_from_checkpoint": "auto"})),
        cwd=REPO, env=ENVIRONMENT, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("sslnlp: error:")]
    assert len(errors) == 1 and re.fullmatch(
        rf"sslnlp: error: {damaged} has 100 bytes where [\d,]+ were written: the checkpoint is damaged; resume from "
        r"an earlier checkpoint \(training.resume_from_checkpoint=PATH\), or copy the checkpoint again whole",
        errors[0]), result.stderr[-3000:]


def test_a_killed_two_process_run_finishes_on_one_process(uninterrupted, prepared_dir, wordpiece_dir, tmp_path):
    """kill -9 of a 2-process run once its step-8 checkpoint is written; resumed on one process it logs the
    uninterrupted run's losses from its checkpoint on (the curve continues) and ends with its weights."""
    overrides = settings(tmp_path / "killed", prepared_dir, wordpiece_dir, **{"training.resume_from_checkpoint": "auto"})
    process = subprocess.Popen(command(DDP, 2, overrides), cwd=REPO, env=ENVIRONMENT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True)
    checkpoint = tmp_path / "killed" / "checkpoints" / "checkpoint-00000008"
    deadline = time.monotonic() + 300
    while not (checkpoint / "loop_state.json").is_file():
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read().decode()[-3000:]
        time.sleep(0.002)
    os.killpg(process.pid, signal.SIGKILL)  # the launcher and both workers, at once
    process.wait()
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    launch(None, 1, overrides)
    whole = uninterrupted(DDP)
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert summary["resizes"][0]["processes"] == [2, 1] and summary["resizes"][0]["step"] >= 8
    resumed, reference = per_step(tmp_path / "killed", "loss"), per_step(whole, "loss")
    assert sorted(resumed) == sorted(reference)  # the killed run's lines, then the resumed run's from its checkpoint
    assert all(abs(resumed[s] - reference[s]) < 1e-4 * reference[s] for s in reference)
    assert largest_difference(tmp_path / "killed", whole) < TOLERANCE


# --------------------------------------------------------------------------------------------- streamed text


LONG, SHORT = 40, 4  # tokens of an even and an odd document: shard 1 of 2 reads records faster than shard 0


def numbered_corpus(path: Path, count: int) -> Path:
    """Document k is the word ``d{k}`` repeated: every token says which document it came from."""
    path.write_text("".join(json.dumps({"text": " ".join([f"d{k}"] * (LONG if k % 2 == 0 else SHORT))}) + "\n"
                            for k in range(count)))
    return path


def numbered_tokenizer(directory: Path, count: int) -> Path:
    """A WordPiece tokenizer whose vocabulary is the special tokens and the words d0 ... d{count - 1}."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"d{k}" for k in range(count)]
    backend = Tokenizer(models.WordPiece({word: index for index, word in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(directory)
    return directory


def test_streamed_text_resumed_on_one_process_reads_no_document_twice_and_counts_what_it_skips(tmp_path):
    """A 2-process streaming run's step-6 checkpoint resumed on one process. The data positions the two launched runs
    saved are reproduced by reading the same streams here (so what is counted is what they trained on); every
    token of every document is then accounted for: trained before or after the resume, or still waiting in the
    resumed stream at its end; never twice; and the documents never read are exactly the skipped records the run
    reported."""
    from sslnlp.data.blocks import BlockStream
    from sslnlp.data.packing import BlockLayout
    from sslnlp.data.sources import block_source, open_training_data
    from sslnlp.data.tokenizer import load_tokenizer

    count, batch, steps, stop = 600, 4, 16, 6
    corpus = numbered_corpus(tmp_path / "numbered.jsonl", count)
    tokenizer_dir = numbered_tokenizer(tmp_path / "tokenizer", count)
    extra = {"data.validation_holdout_every": 0, "training.per_device_train_batch_size": batch,
             "data.shuffle_buffer_size": 8, "training.save_steps": stop, "model.config_overrides": NO_DROPOUT,
             "training.mixed_precision": "no"}
    launch(DDP, 2, tiny_overrides(tmp_path / "two", tokenizer_dir, steps=stop, **{"data.train_files": str(corpus), **extra}))
    resume_from(tmp_path / "two", stop, tmp_path / "one")
    resumed = tiny_overrides(tmp_path / "one", tokenizer_dir, steps=steps, **{
        "data.train_files": str(corpus), "training.resume_from_checkpoint": "auto", **extra})
    launch(None, 1, resumed)
    report = json.loads((tmp_path / "one" / "summary.json").read_text())["resizes"][0]
    assert report["data"] == "streaming" and report["processes"] == [2, 1] and report["records_skipped"] > 0

    config = load_config(PretrainConfig, None, resumed)
    tokenizer = load_tokenizer(str(tokenizer_dir))
    layout = BlockLayout.encoder(tokenizer)

    def stream(rank: int, world: int) -> BlockStream:
        blocks = block_source(open_training_data(config.data)[0], config.data, layout, tokenizer, rank=rank,
                              world_size=world, batch_size=batch)
        return BlockStream(blocks, batch, None, shuffle_buffer_size=config.data.shuffle_buffer_size, seed=config.data.seed)

    def saved(run: str, step: int) -> list[dict]:
        checkpoint = tmp_path / run / "checkpoints" / f"checkpoint-{step:08d}"
        return [json.loads(path.read_text())["data"] for path in sorted(checkpoint.glob("rank_state_*.json"))]

    def plain(state: dict) -> dict:
        return json.loads(json.dumps(state, default=lambda value: value.tolist()))

    trained = np.zeros(count, dtype=np.int64)  # tokens of each document trained on
    first = [stream(rank, 2) for rank in (0, 1)]
    for ranks_stream in first:
        batches = iter(ranks_stream)
        for _ in range(stop):
            ids = next(batches)["input_ids"].numpy()
            np.add.at(trained, ids[ids >= 5] - 5, 1)
    assert [plain(s.state_dict()) for s in first] == saved("two", stop)  # what the 2-process run trained on

    second = stream(0, 1)
    state, again = second.dataset.resume_state(saved("two", stop))
    assert {k: v for k, v in again.items()} == {k: report[k] for k in again}
    second.load_state_dict(state)
    batches = iter(second)
    for _ in range(2 * (steps - stop)):
        ids = next(batches)["input_ids"].numpy()
        np.add.at(trained, ids[ids >= 5] - 5, 1)
    final = plain(second.state_dict())
    assert final == saved("one", steps)[0]  # what the resumed run trained on
    waiting = np.zeros(count, dtype=np.int64)  # read, not yet trained on: the final buffer and carry-over
    pending = [token for block in final["buffer"] for token in block["input_ids"]]
    pending += [token for shard in final["shard_states"].values() for token in shard["packer"]["carry_ids"]]
    pending = np.asarray(pending)
    np.add.at(waiting, pending[pending >= 5] - 5, 1)

    length = np.where(np.arange(count) % 2 == 0, LONG, SHORT)
    seen = trained + waiting
    assert (seen <= length).all()  # no token read twice
    read = seen > 0
    assert (seen[read] == length[read]).all()  # every token of a document read: trained on, or waiting
    never = np.flatnonzero(~read[:report["record"]])
    assert len(never) == report["records_skipped"]  # skipped: exactly what the run said, all of the slower shard 0
    assert (never % 2 == 0).all()


# ------------------------------------------------------------------------------------------- what is refused


def plan(processes: int, saved: dict, objective: str = "mlm", per_device: int = 8, engine: str = "data parallel"):
    from sslnlp.objectives import build_objective
    from sslnlp.training.elastic import plan_resize

    extra = {"training.per_device_train_batch_size": per_device}
    if objective == "simcse":
        extra.update({"objective.name": "simcse"})
    config = load_config(PretrainConfig, None, tiny_overrides("runs/x", "tokenizer", **extra))
    layout = {"processes": 2, "data_workers": 0, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
              **saved}
    config, resize = plan_resize("checkpoint-8", layout, config, processes, engine,
                                 build_objective(config.objective, config.model, config.data))
    return config.training, resize


def test_the_global_batch_is_kept_or_the_resume_refused_in_one_line():
    from sslnlp.runtime import TrainingError

    training, resize = plan(2, {})
    assert resize is None and training.gradient_accumulation_steps == 1  # the same layout: an ordinary resume
    training, resize = plan(1, {})  # 16 blocks a step: 8 per device x 2 micro-batches
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (8, 2)
    assert resize.global_batch == 16 and resize.accumulation == (1, 2)
    training, _ = plan(4, {"processes": 1, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 4},
                       per_device=4)
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (4, 1)
    with pytest.raises(TrainingError, match=r"global batch of 16 blocks \(8 per device x 1 accumulation x 2 "
                                            r"process\(es\)\); 1 process\(es\) x per_device_train_batch_size=3 cannot "
                                            r"keep it with whole micro-batches: set training.per_device_train_batch_"
                                            r"size to a divisor of 16 \(e.g. 2\)"):
        plan(1, {}, per_device=3)
    with pytest.raises(TrainingError, match=r"resume on a number of processes dividing 16$"):
        plan(3, {})
    with pytest.raises(TrainingError, match=r"under DeepSpeed, which sslnlp resumes only on the same number of "
                                            r"processes and workers; relaunch with 2 process\(es\)"):
        plan(1, {}, engine="DeepSpeed")


def test_simcse_keeps_its_in_batch_negatives_across_processes():
    from sslnlp.runtime import TrainingError

    training, resize = plan(1, {}, objective="simcse")  # 16 sentences compared in a micro-batch, as on 2 processes
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (16, 1)
    with pytest.raises(TrainingError, match=r"SimCSE's in-batch negatives are the 16 sentences of a micro-batch on "
                                            r"every process, which 3 processes cannot share evenly"):
        plan(3, {}, objective="simcse")


def test_a_checkpoint_of_another_sslnlp_version_is_refused_in_one_line(corpus_file, wordpiece_dir, tmp_path):
    from sslnlp.training.loop import pretrain

    def run(output_dir: Path, **extra):
        return pretrain(load_config(PretrainConfig, None, tiny_overrides(output_dir, wordpiece_dir, steps=4, **{
            "data.train_files": corpus_file, "training.save_steps": 2, **extra})))

    run(tmp_path / "run")
    resume_from(tmp_path / "run", 2, tmp_path / "old")
    checkpoint = tmp_path / "old" / "checkpoints" / "checkpoint-00000002"
    state = json.loads((checkpoint / "loop_state.json").read_text())
    state.pop("format")  # as sslnlp 0.0.9 wrote it
    state["provenance"]["versions"]["sslnlp"] = "0.0.9"
    (checkpoint / "loop_state.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match=rf"^{checkpoint} was written by sslnlp 0.0.9 \(checkpoint format 1\); this "
                                         r"sslnlp reads format 2: resume it with sslnlp 0.0.9, or start a new output_dir$"):
        run(tmp_path / "old", **{"training.resume_from_checkpoint": "auto"})


def test_electra_resumes_on_one_process(corpus_file, wordpiece_dir, tmp_path):
    """ELECTRA's two models (generator and discriminator, one optimizer) continue on another number of processes
    from streamed text; its sampled replacements are per-process draws, so the curve continues without being the
    uninterrupted one's bit for bit."""
    electra = {"model.model_type": "electra", "objective.name": "electra", "objective.mlm_probability": 0.25,
               "model.config_overrides": "{hidden_size: 64, embedding_size: 32, num_hidden_layers: 2, "
                                         "num_attention_heads: 2, intermediate_size: 128, max_position_embeddings: 64}"}
    launch(DDP, 2, settings(tmp_path / "two", corpus_file, wordpiece_dir, steps=12, **electra))
    resume_from(tmp_path / "two", 8, tmp_path / "one")
    launch(None, 1, settings(tmp_path / "one", corpus_file, wordpiece_dir, steps=12, **electra,
                             **{"training.resume_from_checkpoint": "auto"}))
    summary = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert summary["resizes"][0]["processes"] == [2, 1] and summary["resizes"][0]["data"] == "streaming"
    assert (tmp_path / "one" / "generator" / "model.safetensors").is_file()
    before, after = per_step(tmp_path / "two", "loss"), per_step(tmp_path / "one", "loss")
    assert sorted(after) == [9, 10, 11, 12] and abs(after[12] - before[12]) < 0.1 * before[12]
