"""Batch-size ramp and sequence-length warmup (sslnlp.training.warmups): each step's size on schedule, the text the
same, exact resume, with packed text and prepared shards, and what is refused."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import tiny_overrides

import textgen
from sslnlp import prepare
from sslnlp.config import ConfigError, PretrainConfig, load_config
from sslnlp.training.loop import pretrain
from sslnlp.training.warmups import block_length_at, micro_batches_at, steps_for_tokens

RAMP = {"training.per_device_train_batch_size": 2, "training.gradient_accumulation_steps": 4,
        "training.batch_size_warmup": 0.5, "training.batch_size_warmup_start": 0.25}
SHORTER = {"training.sequence_length_warmup": 0.5, "training.sequence_length_warmup_start": 8}


def config(output_dir, tokenizer_dir, source, steps=8, **extra) -> PretrainConfig:
    return load_config(PretrainConfig, None, tiny_overrides(output_dir, tokenizer_dir, steps=steps, **{
        "data.train_files": str(source), "training.mixed_precision": "no", "training.save_total_limit": 10,
        **extra}))


def records(run: Path, key: str) -> list:
    return [record[key] for record in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if key in record]


def per_step_tokens(run: Path) -> list[int]:
    tokens = records(run, "tokens")[:len(records(run, "loss"))]  # the training records (logging_steps=1)
    return [after - before for before, after in zip([0] + tokens, tokens)]


def test_the_schedules_by_hand():
    # a quarter of 4 micro-batches, growing over the first half of 8 steps, rounded half up
    assert [micro_batches_at(step / 8, 4, 0.5, 0.25) for step in range(8)] == [1, 2, 3, 3, 4, 4, 4, 4]
    # 30 content tokens (a 32-token block, [CLS] and [SEP]) in equal pieces: 6+2, 10+2, 15+2, then whole
    assert [block_length_at(step / 8, 32, 2, 0.5, 8) for step in range(8)] == [8, 12, 17, 17, 32, 32, 32, 32]
    assert micro_batches_at(0.3, 4, 0.0, 0.25) == 4 and block_length_at(0.0, 32, 2, 0.0, 8) == 32  # off
    # a token budget with a ramp: the fewest steps that reach it
    steps = steps_for_tokens(10_000, 512, 4, 0.5, 0.25)
    tokens = [sum(micro_batches_at(s / n, 4, 0.5, 0.25) for s in range(n)) * 128 for n in (steps - 1, steps)]
    assert tokens[0] < 10_000 <= tokens[1]


def test_the_batch_grows_on_schedule_and_resumes_exactly(corpus_file, wordpiece_dir, tmp_path):
    whole = pretrain(config(tmp_path / "whole", wordpiece_dir, corpus_file, **RAMP, **{"training.save_steps": 3}))
    assert records(tmp_path / "whole", "micro_batches") == [1, 2, 3, 3, 4, 4, 4, 4]
    assert per_step_tokens(tmp_path / "whole") == [m * 2 * 32 for m in (1, 2, 3, 3, 4, 4, 4, 4)]
    assert whole["tokens"] == 25 * 2 * 32
    # MFU: every token at the full length's FLOPs, over the run's seconds and the peak it measured and reports
    assert whole["peak_flops_per_second"] > 0 and 0 < whole["model_flops_utilization"] < 1
    assert whole["model_flops_utilization"] * whole["peak_flops_per_second"] * whole["train_runtime"] == \
        pytest.approx(whole["tokens"] * whole["model_flops_per_token"], rel=1e-9)
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "whole" / "checkpoints" / "checkpoint-00000003",
                    tmp_path / "resumed" / "checkpoints" / "checkpoint-00000003")
    pretrain(config(tmp_path / "resumed", wordpiece_dir, corpus_file, **RAMP,
                    **{"training.save_steps": 3, "training.resume_from_checkpoint": "auto"}))
    assert records(tmp_path / "resumed", "micro_batches") == [3, 4, 4, 4, 4]
    assert (tmp_path / "whole" / "model.safetensors").read_bytes() == \
        (tmp_path / "resumed" / "model.safetensors").read_bytes()


def test_a_token_budget_with_a_ramp_ends_when_the_tokens_are_trained(corpus_file, wordpiece_dir, tmp_path):
    summary = pretrain(config(tmp_path / "run", wordpiece_dir, corpus_file, steps=0, **RAMP,
                              **{"training.max_tokens": 1600}))
    assert summary["steps"] == steps_for_tokens(1600, 4 * 2 * 32, 4, 0.5, 0.25)
    assert 1600 <= summary["tokens"] < 1600 + 4 * 2 * 32
    assert records(tmp_path / "run", "learning_rate")[-1] == 0.0  # the schedule ended with the budget


@pytest.fixture(scope="module")
def prepared_dir(wordpiece_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("warmup-prepared")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": text}) + "\n" for text in textgen.documents(400, seed=2)))
    prepare(config(root / "run", wordpiece_dir, corpus), root / "shards", num_proc=1, shard_tokens=4096)
    return root / "shards"


@pytest.mark.parametrize("data", ["packed", "prepared"])
def test_blocks_are_cut_shorter_on_schedule_and_resume_exactly(data, corpus_file, wordpiece_dir, prepared_dir, tmp_path):
    """8 blocks of 32 tokens a step, cut into pieces of 8, 12, 17 tokens (each with [CLS] and [SEP]: more tokens for
    the same text), then whole; a resume at step 3 ends on the uninterrupted run's weights."""
    source = corpus_file if data == "packed" else prepared_dir
    whole = pretrain(config(tmp_path / "whole", wordpiece_dir, source, **SHORTER, **{"training.save_steps": 3}))
    assert records(tmp_path / "whole", "block_length") == [8, 12, 17, 17, 32, 32, 32, 32]
    # 30 content tokens a block in k pieces of 30/k + 2 tokens: 8 x (30 + 2k) tokens a step
    assert per_step_tokens(tmp_path / "whole") == [8 * (30 + 2 * k) for k in (5, 3, 2, 2, 1, 1, 1, 1)]
    assert whole["eval_loss"] > 0
    # the short steps' tokens count at their own length's FLOPs: fewer than at the full length
    flops = whole["model_flops_utilization"] * whole["peak_flops_per_second"] * whole["train_runtime"]
    assert 0.5 * whole["tokens"] * whole["model_flops_per_token"] < flops < whole["tokens"] * whole["model_flops_per_token"]
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "whole" / "checkpoints" / "checkpoint-00000003",
                    tmp_path / "resumed" / "checkpoints" / "checkpoint-00000003")
    pretrain(config(tmp_path / "resumed", wordpiece_dir, source, **SHORTER,
                    **{"training.save_steps": 3, "training.resume_from_checkpoint": "auto"}))
    assert (tmp_path / "whole" / "model.safetensors").read_bytes() == \
        (tmp_path / "resumed" / "model.safetensors").read_bytes()


def test_cut_blocks_hold_the_same_text_with_the_block_special_tokens(wordpiece_dir):
    import torch

    from sslnlp.data.packing import BlockLayout
    from sslnlp.data.tokenizer import load_tokenizer

    layout = BlockLayout.encoder(load_tokenizer(wordpiece_dir), word_starts=True)
    cls, sep = layout.prefix[0], layout.suffix[0]
    ids = torch.cat([torch.full((2, 1), cls), torch.arange(60).reshape(2, 30) + 10, torch.full((2, 1), sep)], dim=1)
    starts = torch.zeros(2, 32, dtype=torch.bool)
    starts[:, 1:31] = torch.arange(30) % 4 == 0
    cut = layout.cut({"input_ids": ids, "word_starts": starts, "position": torch.tensor([7, 8])}, 12)
    assert cut["input_ids"].shape == (6, 12) and cut["position"].tolist() == [7, 8]
    assert (cut["input_ids"][:, 0] == cls).all() and (cut["input_ids"][:, -1] == sep).all()
    assert torch.equal(cut["input_ids"][:, 1:-1].reshape(2, 30), ids[:, 1:31])  # the same text, in order
    assert torch.equal(cut["word_starts"][:, 1:-1].reshape(2, 30), starts[:, 1:31])
    assert not cut["word_starts"][:, [0, -1]].any()


def test_what_the_warmups_cannot_do_is_refused_in_one_line(corpus_file, wordpiece_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"training.batch_size_warmup grows the batch by accumulating more "
                                          r"micro-batches, but training.gradient_accumulation_steps=1; split the "
                                          r"batch, e.g. per_device_train_batch_size=2 gradient_accumulation_steps=4"):
        config(tmp_path / "a", wordpiece_dir, corpus_file, **{"training.batch_size_warmup": 0.5}).check()
    with pytest.raises(ConfigError, match=r"training.sequence_length_warmup_start=32 must be at least 8 and shorter "
                                          r"than data.max_seq_length=32"):
        config(tmp_path / "b", wordpiece_dir, corpus_file, **{**SHORTER, "training.sequence_length_warmup_start": 32}).check()
    with pytest.raises(ConfigError, match=r"training.sequence_length_warmup=1.5 is out of range"):
        config(tmp_path / "c", wordpiece_dir, corpus_file, **{"training.sequence_length_warmup": 1.5}).check()
    from sslnlp.runtime import TrainingError

    with pytest.raises(TrainingError, match=r"training.sequence_length_warmup cuts packed blocks into shorter ones, "
                                            r"but simcse reads unpacked segments; drop the warmup"):
        pretrain(config(tmp_path / "d", wordpiece_dir, corpus_file, **SHORTER, **{"objective.name": "simcse"}))
