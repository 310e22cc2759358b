"""Attention within documents: training-step time with data.attention_within_documents off (A) and on (B).

    python benchmarks/attention_within_documents.py                              # cram-cpu's model, CPU (minutes)
    python benchmarks/attention_within_documents.py --repeats 1 --steps 2 --warmup 1   # smoke run (seconds)
    python benchmarks/attention_within_documents.py --recipe recipes/bert-base.yaml --device cuda   # one GPU

Run from the repository root. Both arms train the recipe's model (recipes/cram-cpu.yaml: ModernBERT, hidden 256,
2 layers, sequence 128, batch 32, sparse masked-LM head, its precision: bf16 autocast where the CPU computes it
natively) from the same initial weights on the same batches: packed blocks of ``sslnlp:python-docs`` (the docstrings
of Python's own library: short documents, many per block, offline) with a WordPiece tokenizer of the recipe's size
trained on them once and cached under /tmp, masked by the objective's collator with the same seed. The arms differ
only in data.attention_within_documents: B's batches carry document ids and its model gets per-document position ids
and the document attention mask (sdpa: a boolean [B, 1, L, L] mask built on the device every step).

What is timed: one optimizer step, as sslnlp's loop takes it (objective.loss -> backward -> gradient clipping ->
AdamW step), from a collated batch already in memory (collation is not timed). Both models live in one process and
the arms alternate A B A B, ``--steps`` timed steps each per repetition (after ``--warmup`` untimed steps per arm
at the start), so a neighbour on a shared machine slows both alike. Printed: per arm the median step time, its
spread (25th-75th percentile and min-max over all timed steps) and tokens/s; last line the ratio B / A of the
medians (above 1: the option costs time).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # measure this checkout's sslnlp

import torch  # noqa: E402

from sslnlp.config import PretrainConfig, load_config  # noqa: E402
from sslnlp.data.corpus import load_corpus  # noqa: E402
from sslnlp.models.modeling import build_model_config  # noqa: E402
from sslnlp.objectives import build_objective  # noqa: E402
from sslnlp.data.blocks import BlockStream  # noqa: E402
from sslnlp.data.packing import PackedBlocks  # noqa: E402
from sslnlp.runtime import resolve_mixed_precision  # noqa: E402
from sslnlp.data.tokenizer import load_tokenizer, train_tokenizer  # noqa: E402

CORPUS = "sslnlp:python-docs"
DISTINCT_BATCHES = 8  # batches cycled through by both arms


def prepared_tokenizer(config: PretrainConfig):
    """A WordPiece tokenizer of the recipe's kind and size on the benchmark corpus, trained once and cached."""
    options = config.tokenizer
    folder = Path(tempfile.gettempdir()) / f"sslnlp-bench-documents-{options.kind}-{options.vocab_size}"
    if not (folder / "tokenizer.json").is_file():
        train_tokenizer(load_corpus(CORPUS), folder, kind=options.kind, encoder=True, vocab_size=options.vocab_size,
                        max_documents=options.training_documents, lowercase=options.lowercase)
    return load_tokenizer(str(folder))


def raw_batches(config: PretrainConfig, objective, tokenizer) -> list[dict]:
    blocks = PackedBlocks(load_corpus(CORPUS), tokenizer, config.data.max_seq_length,
                          layout=objective.block_layout(tokenizer), repeat=True,
                          documents_per_batch=config.data.documents_per_batch)
    stream = iter(BlockStream(blocks, config.training.per_device_train_batch_size))
    return [next(stream) for _ in range(DISTINCT_BATCHES)]


@dataclasses.dataclass
class Arm:
    name: str
    objective: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    batches: list[dict]
    max_grad_norm: float
    seconds: list[float] = dataclasses.field(default_factory=list)


def build_arm(name: str, config: PretrainConfig, on: bool, tokenizer, blocks: list[dict], device) -> Arm:
    data = dataclasses.replace(config.data, attention_within_documents=on)
    objective = build_objective(config.objective, config.model, data)
    model_config = build_model_config(config.model, tokenizer, data.max_seq_length)
    objective.check_model_config(model_config)
    torch.manual_seed(config.training.seed)  # the same initial weights in both arms
    model = objective.build_model(model_config).to(device).train()
    training = config.training
    optimizer = torch.optim.AdamW(model.parameters(), lr=training.learning_rate, weight_decay=training.weight_decay,
                                  betas=(training.adam_beta1, training.adam_beta2), eps=training.adam_epsilon)
    collator = objective.build_collator(tokenizer, seed=training.seed)  # the same masks in both arms
    batches = [{k: v.to(device) for k, v in collator(dict(block)).items()} for block in blocks]
    return Arm(name, objective, model, optimizer, batches, training.max_grad_norm or float("inf"))


def train_steps(arm: Arm, steps: int, autocast, device, timed: bool) -> None:
    for step in range(steps):
        batch = arm.batches[step % len(arm.batches)]
        start = time.perf_counter()
        with autocast():
            output = arm.objective.loss(arm.model, batch)
        counts = arm.objective.count(batch)
        weights = arm.objective.weights()
        total = sum(weights[t] * output.sums[t] / max(counts[t], 1) for t in weights)
        total.backward()
        torch.nn.utils.clip_grad_norm_(arm.model.parameters(), arm.max_grad_norm)
        arm.optimizer.step()
        arm.optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if timed:
            arm.seconds.append(time.perf_counter() - start)


def summary_line(arm: Arm, tokens_per_step: int) -> str:
    seconds = sorted(arm.seconds)
    quartiles = statistics.quantiles(seconds, n=4) if len(seconds) > 1 else [seconds[0]] * 3
    median = statistics.median(seconds)
    return (f"{arm.name}: median {median * 1e3:8.1f} ms/step  "
            f"(p25-p75 {quartiles[0] * 1e3:.1f}-{quartiles[2] * 1e3:.1f}, min-max {seconds[0] * 1e3:.1f}-{seconds[-1] * 1e3:.1f}, n={len(seconds)})  "
            f"{tokens_per_step / median:,.0f} tokens/s")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/cram-cpu.yaml")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5, help="A B rounds")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per arm per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per arm before the first round")
    parser.add_argument("--precision", choices=["auto", "no", "bf16"], default=None,
                        help="default: the recipe's training.mixed_precision")
    parser.add_argument("overrides", nargs="*",
                        help="dotted recipe overrides, e.g. training.per_device_train_batch_size=16")
    args = parser.parse_args(argv)

    config = load_config(PretrainConfig, args.recipe, [f"data.train_files={CORPUS}", *args.overrides])
    device = torch.device(args.device)
    precision = resolve_mixed_precision(args.precision or config.training.mixed_precision)
    autocast = ((lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16"
                else contextlib.nullcontext)
    tokenizer = prepared_tokenizer(config)
    first = build_objective(config.objective, config.model, config.data)
    blocks = raw_batches(config, first, tokenizer)
    arms = [build_arm("A off", config, False, tokenizer, blocks, device),
            build_arm("B on ", config, True, tokenizer, blocks, device)]
    documents = arms[1].batches[0]["document_ids"]
    tokens_per_step = documents.numel()
    print(f"{config.model.model_type} ({args.recipe}), batch {documents.shape[0]} x {documents.shape[1]}, "
          f"{precision if precision != 'no' else 'fp32'}, {torch.get_num_threads()} threads, "
          f"{(documents.amax(1) + 1).float().mean():.1f} documents per block (first batch)", flush=True)
    for arm in arms:
        train_steps(arm, args.warmup, autocast, device, timed=False)
    for round_index in range(args.repeats):
        for arm in arms:
            train_steps(arm, args.steps, autocast, device, timed=True)
        medians = [f"{arm.name.strip()} {statistics.median(arm.seconds[-args.steps:]) * 1e3:.1f} ms" for arm in arms]
        print(f"round {round_index + 1}/{args.repeats}: " + ", ".join(medians), flush=True)
    for arm in arms:
        print(summary_line(arm, tokens_per_step))
    ratio = statistics.median(arms[1].seconds) / statistics.median(arms[0].seconds)
    print(f"ratio B/A of median step time: {ratio:.3f}")


if __name__ == "__main__":
    main()
