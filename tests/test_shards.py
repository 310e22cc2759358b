"""Pre-tokenized shards (sslnlp prepare): the blocks are the streaming path's, deterministic whatever the number of
processes, resumable after a kill; training reads only them, resumes exactly, splits them disjointly across ranks,
keeps memory flat, reads them from a remote (Hub) location, and refuses blocks made for another run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import textgen
from conftest import ACCELERATE, tiny_overrides

from sslnlp.config import PretrainConfig, load_config
from sslnlp.data.corpus import CorpusError, training_and_validation_corpora
from sslnlp.data.blocks import BlockStream
from sslnlp.data.packing import BlockLayout, PackedBlocks
from sslnlp import prepare
from sslnlp.data.prepared import PreparedBlocks, PreparedData, sha256_file
from sslnlp.data.tokenizer import load_tokenizer
from sslnlp.training.loop import pretrain

REPO = Path(__file__).resolve().parents[1]
ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def config_for(corpus, tokenizer_dir, output_dir, steps=30, **extra):
    return load_config(PretrainConfig, None, tiny_overrides(output_dir, tokenizer_dir, steps=steps,
                                                            **{"data.train_files": str(corpus), **extra}))


def write_corpus(path: Path, count: int, seed: int) -> Path:
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in textgen.documents(count, seed=seed)))
    return path


def shard_digests(directory: Path) -> dict[str, str]:
    return {str(path.relative_to(directory)): sha256_file(path) for path in sorted(directory.glob("*/shard-*.arrow"))}


def streamed_blocks(corpus, tokenizer, layout) -> tuple[np.ndarray, np.ndarray]:
    chunks = [c for c in PackedBlocks(corpus, tokenizer, 32, layout=layout, repeat=False) if c["state"] is not None]
    return np.concatenate([c["input_ids"] for c in chunks]), np.concatenate([c["word_starts"] for c in chunks])


def test_prepared_blocks_are_the_streaming_blocks_whatever_the_number_of_processes(corpus_file, wordpiece_dir, tmp_path):
    import datasets

    config = config_for(corpus_file, wordpiece_dir, tmp_path / "run", **{"objective.masking": "whole_word"})
    one = prepare(config, tmp_path / "one", num_proc=1, shard_tokens=2048)
    two = prepare(config, tmp_path / "two", num_proc=2, shard_tokens=2048)
    assert len(one["splits"]["train"]["shards"]) >= 4
    assert shard_digests(tmp_path / "one") == shard_digests(tmp_path / "two")
    assert json.loads((tmp_path / "one" / "manifest.json").read_text()) == json.loads((tmp_path / "two" / "manifest.json").read_text())

    tokenizer = load_tokenizer(wordpiece_dir)
    layout = BlockLayout.encoder(tokenizer, word_starts=True)
    prepared = PreparedData(tmp_path / "one")
    for name, corpus in zip(("train", "validation"), training_and_validation_corpora(config.data)):
        split = prepared.split(name)
        ids, starts = streamed_blocks(corpus, tokenizer, layout)  # full blocks only: the tail is dropped
        read = split.take(np.arange(split.blocks), with_word_starts=True)
        assert np.array_equal(read["input_ids"], ids) and np.array_equal(read["word_starts"], starts)
        manifest = one["splits"][name]
        assert manifest["tokens"] == 32 * split.blocks and 0 <= manifest["tail_tokens_dropped"] < 32
    assert one["splits"]["train"]["documents"] == 540 and one["splits"]["validation"]["documents"] == 60
    # an ordinary datasets Arrow file: users inspect shards with the library they know
    shard = datasets.Dataset.from_file(str(tmp_path / "one" / "train" / "shard-00000.arrow"))
    assert shard[3]["input_ids"] == prepared.split("train").take(np.array([3]), False)["input_ids"][0].tolist()
    assert (tmp_path / "one" / "tokenizer" / "tokenizer.json").is_file()


def test_an_interrupted_prepare_resumes_into_the_same_shards(wordpiece_dir, tmp_path):
    corpus = write_corpus(tmp_path / "big.jsonl", 6000, seed=11)
    arguments = [sys.executable, "-m", "sslnlp", "prepare", "--output-dir", str(tmp_path / "killed"), "--num-proc", "1",
                 "--shard-tokens", "1024", *tiny_overrides(tmp_path / "run", wordpiece_dir, **{"data.train_files": str(corpus)})]
    process = subprocess.Popen(arguments, cwd=REPO, env=ENVIRONMENT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    manifest_path, deadline = tmp_path / "killed" / "manifest.json", time.time() + 120
    while time.time() < deadline:  # kill once a few shards are recorded, mid-split
        if manifest_path.is_file() and len(json.loads(manifest_path.read_text())["splits"].get("train", {"shards": []})["shards"]) >= 5:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted = json.loads(manifest_path.read_text())
    assert not interrupted["complete"]
    with pytest.raises(CorpusError, match="not completely prepared .*run the same sslnlp prepare command again"):
        pretrain(config_for(tmp_path / "killed", wordpiece_dir, tmp_path / "early"))
    result = subprocess.run(arguments, cwd=REPO, env=ENVIRONMENT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming the interrupted prepare" in result.stderr
    prepare(config_for(corpus, wordpiece_dir, tmp_path / "run"), tmp_path / "whole", num_proc=1, shard_tokens=1024)
    assert shard_digests(tmp_path / "killed") == shard_digests(tmp_path / "whole")
    assert not list((tmp_path / "killed").glob("**/.*.tmp*"))
    # the same command again has nothing to do; other settings are refused, not mixed in
    again = prepare(config_for(corpus, wordpiece_dir, tmp_path / "run"), tmp_path / "killed", num_proc=1, shard_tokens=1024)
    assert again["complete"]
    with pytest.raises(CorpusError, match=r"prepared with other settings \(.*max_seq_length differ\); give a new --output"):
        prepare(config_for(corpus, wordpiece_dir, tmp_path / "run", **{"data.max_seq_length": 64}), tmp_path / "killed",
                num_proc=1, shard_tokens=1024)


@pytest.fixture(scope="module")
def prepared_dir(wordpiece_dir, tmp_path_factory) -> Path:
    """A corpus prepared and then deleted: runs from these shards cannot read text."""
    root = tmp_path_factory.mktemp("prepared")
    corpus = write_corpus(root / "corpus.jsonl", 600, seed=1)
    prepare(config_for(corpus, wordpiece_dir, root / "run"), root / "shards", num_proc=2, shard_tokens=2048)
    corpus.unlink()
    return root / "shards"


def test_training_reads_only_the_shards_and_resumes_exactly_across_epochs(prepared_dir, wordpiece_dir, tmp_path):
    extra = {"data.shuffle_documents": "true", "training.per_device_train_batch_size": 32, "training.save_steps": 15,
             "training.save_total_limit": 5}
    full = pretrain(config_for(prepared_dir, wordpiece_dir, tmp_path / "full", steps=40, **extra))
    assert full["epochs"] >= 2 and full["eval_loss"] > 0  # ~730 training blocks, 1,280 read
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "full" / "metrics.jsonl") if '"loss"' in line]
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5])
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "checkpoint-00000015",
                    tmp_path / "resumed" / "checkpoints" / "checkpoint-00000015")
    pretrain(config_for(prepared_dir, wordpiece_dir, tmp_path / "resumed", steps=40,
                        **extra, **{"training.resume_from_checkpoint": "auto"}))
    assert (tmp_path / "full" / "model.safetensors").read_bytes() == (tmp_path / "resumed" / "model.safetensors").read_bytes()


def global_steps(split, layout, world: int, workers: int, step_blocks: int, steps: int, batch_size: int,
                 collate=None, states=None) -> tuple[list[list], list]:
    """Per optimizer step of ``step_blocks`` blocks per rank (micro-batches of ``batch_size``), the micro-batches every
    rank of a ``world``-process read of the split takes, and the ranks' stream states after the last step.
    ``states``: every rank's saved stream state of another layout, resumed through ``resume_state`` as the loop does."""
    streams = []
    for rank in range(world):
        dataset = PreparedBlocks(split, layout=layout, rank=rank, world_size=world, num_workers=workers,
                                 batch_size=batch_size, shuffle=True, window=48, seed=3)
        stream = BlockStream(dataset, batch_size, collate, num_workers=workers, shuffle_buffer_size=64, seed=5)
        if states is not None:
            stream.load_state_dict(dataset.resume_state(states)[0])
        streams.append((stream, iter(stream)))
    batches = [[next(iterator) for _, iterator in streams for _ in range(step_blocks // batch_size)]
               for _ in range(steps)]
    return batches, [stream.state_dict() for stream, _ in streams]


def block_ids(split, batches) -> list[list[int]]:
    """Per step, the ids of its blocks (sorted: a step's gradient is their sum, whoever reads which)."""
    every = split.take(np.arange(split.blocks), with_word_starts=False)["input_ids"]
    index = {row.tobytes(): block for block, row in enumerate(every)}
    assert len(index) == split.blocks  # every block's tokens differ: its id is recoverable from its row
    return [sorted(index[row.numpy().astype(np.int32).tobytes()] for batch in step for row in batch["input_ids"])
            for step in batches]


def micro_batches(step: list[dict]) -> list[bytes]:
    """A step's micro-batches with their masks, in an order that does not depend on which rank read which."""
    return sorted(batch["input_ids"].numpy().tobytes() + batch["labels"].numpy().tobytes() for batch in step)


def test_every_step_reads_the_same_blocks_whatever_the_number_of_processes_and_workers(prepared_dir, wordpiece_dir):
    """A step's blocks (16 a step) and their split into micro-batches with their masks do not depend on the
    processes (1, 2, 4) or data workers that read them; each epoch visits every block once, in another order; a read
    stopped on 2 processes and resumed on 1 (workers 2 -> 0) or 4 continues with exactly the micro-batches and masks
    of the uninterrupted read."""
    from sslnlp.data.masking import MaskedLanguageModelingCollator

    tokenizer = load_tokenizer(wordpiece_dir)
    split = PreparedData(prepared_dir).split("train")
    layout = BlockLayout.encoder(tokenizer)
    steps = -(-2 * split.blocks // 16) + 1  # past two epochs
    reference, _ = global_steps(split, layout, 1, 0, 16, steps, 16)
    ordered = []  # the reference's blocks in the order read (one micro-batch a step)
    every = split.take(np.arange(split.blocks), with_word_starts=False)["input_ids"]
    index = {row.tobytes(): block for block, row in enumerate(every)}
    for step in reference:
        ordered += [index[row.numpy().astype(np.int32).tobytes()] for row in step[0]["input_ids"]]
    first, second = ordered[:split.blocks], ordered[split.blocks:2 * split.blocks]
    assert sorted(first) == sorted(second) == list(range(split.blocks)) and first != second
    once = PreparedBlocks(split, layout=layout, batch_size=split.blocks + 5, repeat=False)  # evaluation: one pass
    assert sum(len(chunk["input_ids"]) for chunk in once.iter_shard(0)) == split.blocks
    for world, workers, batch_size in ((2, 0, 8), (4, 1, 4), (2, 2, 4), (1, 0, 4)):
        batches, _ = global_steps(split, layout, world, workers, 16 // world, 12, batch_size)
        assert block_ids(split, batches) == block_ids(split, reference[:12]), (world, workers, batch_size)

    def masking():
        return MaskedLanguageModelingCollator.from_tokenizer(tokenizer, seed=0)

    whole, _ = global_steps(split, layout, 1, 0, 16, 10, 4, collate=masking())
    before, states = global_steps(split, layout, 2, 2, 8, 4, 4, collate=masking())
    for world, workers in ((1, 0), (4, 0)):
        after, _ = global_steps(split, layout, world, workers, 16 // world, 6, 4, collate=masking(), states=states)
        assert len(before + after) == len(whole)
        for got, expected in zip(before + after, whole):
            assert micro_batches(got) == micro_batches(expected), (world, workers)


def test_a_two_process_launch_shares_each_step_between_ranks(prepared_dir, wordpiece_dir, tmp_path):
    output_dir = tmp_path / "two"
    arguments = [ACCELERATE, "launch", "--config_file", str(REPO / "recipes" / "accelerate" / "cpu-2proc.yaml"),
                 "--multi_gpu", "-m", "sslnlp", "pretrain",
                 *tiny_overrides(output_dir, wordpiece_dir, steps=12, **{"data.train_files": str(prepared_dir),
                                                                         "training.save_steps": 12})]
    result = subprocess.run(arguments, cwd=REPO, env={**ENVIRONMENT, "ACCELERATE_USE_CPU": "1"}, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((output_dir / "summary.json").read_text())["world_size"] == 2
    checkpoint = output_dir / "checkpoints" / "checkpoint-00000012"
    states = [json.loads((checkpoint / f"rank_state_{rank}.json").read_text())["data"] for rank in (0, 1)]
    # one position for the whole run: 12 steps of 2 x 8 blocks, each rank its own 8 of every step
    assert [state["shard_states"]["0"]["position"] for state in states] == [12 * 16, 12 * 16]
    assert all(state["blocks_consumed"] == 12 * 8 for state in states)


def test_reading_keeps_memory_flat_in_corpus_size(wordpiece_dir, tmp_path):
    """Every block of a 1.6M-token prepared split read in order: the process's anonymous (heap) memory grows by a small
    fraction of the data: the shards are memory-mapped, not loaded."""
    corpus = write_corpus(tmp_path / "corpus.jsonl", 40000, seed=5)
    prepare(config_for(corpus, wordpiece_dir, tmp_path / "run", **{"data.max_seq_length": 128,
                                                                   "data.validation_holdout_every": 0}),
            tmp_path / "shards", num_proc=2, shard_tokens=2**20)
    code = f"""
import re, numpy as np
from sslnlp.data.packing import BlockLayout
from sslnlp.data.prepared import PreparedBlocks, PreparedData
from sslnlp.data.tokenizer import load_tokenizer
def anonymous():
    return int(re.search(r"Anonymous:\\s+(\\d+) kB", open("/proc/self/smaps_rollup").read()).group(1)) * 1024
split = PreparedData({str(tmp_path / 'shards')!r}).split("train")
dataset = PreparedBlocks(split, layout=BlockLayout.encoder(load_tokenizer({wordpiece_dir!r})), repeat=False)
iterator = dataset.iter_shard(0)
next(iterator)
before, blocks = anonymous(), 0
for chunk in iterator:
    blocks += len(chunk["input_ids"])
print(blocks, anonymous() - before, 4 * blocks * 128)
"""
    result = subprocess.run([sys.executable, "-c", code], env=ENVIRONMENT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    blocks, grown, as_int32 = map(int, result.stdout.split())
    assert blocks * 128 > 1_500_000
    print(grown, as_int32)
    assert grown < 0.05 * as_int32, (grown, as_int32)


def test_prepared_shards_stream_from_a_remote_location(prepared_dir, wordpiece_dir, tmp_path):
    """An hf:// URL through fsspec (the local Hub server): each rank fetches the manifest, the tokenizer and its
    shard files once into the cache; the run trains as from the local directory, to the same weights."""
    from hub_server import HubServer

    files = {str(path.relative_to(prepared_dir)): path.read_bytes() for path in prepared_dir.rglob("*") if path.is_file()}
    local = tmp_path / "local"
    subprocess.run([sys.executable, "-m", "sslnlp", "pretrain",
                    *tiny_overrides(local, wordpiece_dir, steps=10, **{"data.train_files": str(prepared_dir)})],
                   cwd=REPO, env=ENVIRONMENT, check=True, capture_output=True)
    with HubServer() as hub:
        hub.add_dataset("me/prepared", files)
        environment = {**ENVIRONMENT, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"),
                       "SSLNLP_CACHE": str(tmp_path / "cache")}
        overrides = tiny_overrides(tmp_path / "remote", wordpiece_dir, steps=10,
                                   **{"data.train_files": "hf://datasets/me/prepared"})
        overrides.remove(f"tokenizer.tokenizer_name_or_path={wordpiece_dir}")  # the prepared one is used
        result = subprocess.run([sys.executable, "-m", "sslnlp", "pretrain", *overrides], cwd=REPO, env=environment,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        fetched = sorted({r["path"].split("/resolve/main/")[-1] for r in hub.requests
                          if "/resolve/" in r["path"] and r["method"] == "GET"})
    assert "manifest.json" in fetched and "tokenizer/tokenizer.json" in fetched
    assert any(name.startswith("train/shard-") for name in fetched)
    assert list((tmp_path / "cache" / "prepared").glob("*/train/shard-*.arrow"))
    assert (local / "model.safetensors").read_bytes() == (tmp_path / "remote" / "model.safetensors").read_bytes()


def test_a_run_unlike_the_prepared_blocks_is_refused_in_one_line(prepared_dir, wordpiece_dir, tmp_path):
    from sslnlp.data.tokenizer import train_tokenizer

    other = tmp_path / "other-tokenizer"
    train_tokenizer(textgen.documents(200, seed=9), other, kind="wordpiece", encoder=True, vocab_size=448)

    def refused(*extra):
        overrides = tiny_overrides(tmp_path / "refused", wordpiece_dir, steps=5, **{"data.train_files": str(prepared_dir)})
        result = subprocess.run([sys.executable, "-m", "sslnlp", "pretrain", *overrides, *extra], cwd=REPO,
                                env=ENVIRONMENT, capture_output=True, text=True, timeout=600)
        assert result.returncode == 2
        lines = [line for line in result.stderr.splitlines() if line.startswith("sslnlp: error:")]
        assert len(lines) == 1, result.stderr[-2000:]
        assert not (tmp_path / "refused" / "checkpoints").exists()
        return lines[0]

    assert "was prepared with another tokenizer" in refused(f"tokenizer.tokenizer_name_or_path={other}")
    assert "holds blocks of 32 tokens but this run has data.max_seq_length=64" in refused("data.max_seq_length=64")
    assert "has no word starts, which this run's masking needs" in refused("objective.masking=whole_word")
