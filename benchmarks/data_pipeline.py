"""Data-pipeline throughput and memory: sslnlp's stream vs the Hugging Face run_mlm.py recipe (no model, CPU).

    python benchmarks/data_pipeline.py                                   # full run: throughput x3 each + memory
    python benchmarks/data_pipeline.py --corpus ../shared/corpora/small.jsonl.gz --repeats 3
    python benchmarks/data_pipeline.py --no-memory --no-extras --repeats 1   # quick look
    python benchmarks/data_pipeline.py --memory-tokens 5000000           # cap the pass over the large corpus

Run from the repository root. Both pipelines read the same JSON Lines file with the same WordPiece tokenizer (30,522
tokens, trained once on the corpus and cached under /tmp, or --tokenizer DIR) and yield MLM batches of 32 x 128:

  A  sslnlp:    load_corpus -> PackedBlocks(encoder layout, repeat=False) -> BlockStream(32, MLM collator)
  B  reference: load_dataset('json') -> map(tokenize) -> map(group_texts) -> DataLoader(DataCollatorForLanguageModeling)
  P  prepared:  sslnlp prepare once (not timed here) -> PreparedBlocks(repeat=False) -> BlockStream(32, MLM collator):
                what a training process does with data.train_files=PREPARED_DIR (no tokenization at train time)

Runs alternate A B A B (the machine is shared, so neighbours slow whichever run they overlap); each line gives wall-clock
tokens/s and tokens per CPU-second (less sensitive to neighbours). Tokens are the non-padding tokens of the collated
batches. The extras (--extras, on by default) add A with the training default shuffle buffer (2048 blocks) and B with
streaming=True. The reference gets a fresh datasets cache per run, so no run reuses an earlier run's Arrow files.
The prepared part (--prepared, on by default) also times `sslnlp prepare` itself with 1 and with 2 tokenizer processes,
alternated, each into a fresh directory (prepare tokens/s), checks that both wrote identical shards, and adds P to
the alternation; its ratio lines compare P with A (the streaming path) and with B.
The memory part (--memory, on by default) streams A over --corpus and over --memory-corpus in fresh subprocesses and
compares their peak RSS: a stream should not grow with the size of the corpus. The last line is the median ratio.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # set before transformers/datasets are imported: they read them once
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Run as a file, sys.path[0] is benchmarks/; put the checkout first so we measure this tree's sslnlp.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sslnlp.data.corpus import load_corpus  # noqa: E402
from sslnlp.data.masking import MaskedLanguageModelingCollator  # noqa: E402
from sslnlp.data.blocks import BlockStream  # noqa: E402
from sslnlp.data.packing import BlockLayout, PackedBlocks  # noqa: E402
from sslnlp.data.tokenizer import load_tokenizer, train_tokenizer  # noqa: E402

BLOCK_LENGTH, BATCH_SIZE, VOCAB_SIZE = 128, 32, 30522


def get_tokenizer(corpus: str, tokenizer_dir: str | None):
    """The shared WordPiece tokenizer: loaded from tokenizer_dir, or trained on the corpus once and cached in /tmp."""
    directory = Path(tokenizer_dir or f"/tmp/sslnlp-bench-wordpiece{VOCAB_SIZE}-{Path(corpus).name}")
    if not (directory / "tokenizer.json").exists():
        print(f"training the WordPiece tokenizer on {corpus} -> {directory}", flush=True)
        train_tokenizer(load_corpus(corpus), directory, kind="wordpiece", vocab_size=VOCAB_SIZE, round_vocab_to=0)
    return load_tokenizer(directory), str(directory)


def collated_tokens(dataset, tokenizer, shuffle_buffer_size: int, max_tokens: int) -> int:
    """Batches of ``dataset``'s blocks through BlockStream and the MLM collator; returns their non-padding tokens."""
    stream = BlockStream(dataset, batch_size=BATCH_SIZE, collate=MaskedLanguageModelingCollator.from_tokenizer(tokenizer),
                         shuffle_buffer_size=shuffle_buffer_size)
    tokens = 0
    for batch in stream:
        # Count pads by id, not by attention_mask: BlockStream can drop the last block's mask (see the report).
        # Random replacements never draw special ids, so no real token reads as [PAD].
        tokens += int((batch["input_ids"] != tokenizer.pad_token_id).sum())
        if max_tokens and tokens >= max_tokens:
            break
    return tokens


def run_sslnlp(corpus: str, tokenizer, shuffle_buffer_size: int = 0, max_tokens: int = 0) -> int:
    """One pass of read -> tokenize -> pack -> collate; returns the non-padding tokens of all batches."""
    dataset = PackedBlocks(load_corpus(corpus), tokenizer, BLOCK_LENGTH, layout=BlockLayout.encoder(tokenizer), repeat=False)
    return collated_tokens(dataset, tokenizer, shuffle_buffer_size, max_tokens)


def run_prepared(directory: str, tokenizer, shuffle_buffer_size: int = 0, max_tokens: int = 0) -> int:
    """One pass over prepared shards: memory-mapped blocks -> the same BlockStream and collator as A. Prepared blocks
    shuffle as training reads them: chunks in a seeded order and windows of ``shuffle_buffer_size`` blocks permuted
    (the stream's own buffer is not used on top), a micro-batch of BATCH_SIZE blocks at a time."""
    from sslnlp.data.prepared import PreparedBlocks, PreparedData

    dataset = PreparedBlocks(PreparedData(directory).split("train"), layout=BlockLayout.encoder(tokenizer), repeat=False,
                             batch_size=BATCH_SIZE, shuffle=bool(shuffle_buffer_size), window=shuffle_buffer_size)
    return collated_tokens(dataset, tokenizer, shuffle_buffer_size, max_tokens)


def prepare_corpus(corpus: str, tokenizer_dir: str, output: str, num_proc: int) -> dict:
    """sslnlp prepare of the corpus for 128-token MLM blocks (no validation split); returns the manifest."""
    from sslnlp.config import PretrainConfig, load_config
    from sslnlp import prepare

    config = load_config(PretrainConfig, None, [f"data.train_files={corpus}", f"data.max_seq_length={BLOCK_LENGTH}",
                                                f"tokenizer.tokenizer_name_or_path={tokenizer_dir}",
                                                "data.validation_holdout_every=0"])
    return prepare(config, output, num_proc=num_proc)


def time_prepare(corpus: str, tokenizer_dir: str, repeats: int, workspace: str) -> str:
    """prepare with 1 and 2 processes, alternated; prints tokens/s; returns one prepared directory."""
    from sslnlp.data.prepared import sha256_file

    rates: dict[int, list[float]] = {1: [], 2: []}
    digests = set()
    for repeat in range(repeats):
        for num_proc in (1, 2):
            output = Path(workspace) / f"prepared-{num_proc}-{repeat}"
            wall = time.perf_counter()
            manifest = prepare_corpus(corpus, tokenizer_dir, str(output), num_proc)
            wall = time.perf_counter() - wall
            tokens = manifest["splits"]["train"]["tokens"]
            rates[num_proc].append(tokens / wall)
            digests.add(tuple(sha256_file(p) for p in sorted(output.glob("train/shard-*.arrow"))))
            print(f"prepare run {repeat + 1} num_proc={num_proc} {tokens:>10,} tokens {wall:6.2f} s "
                  f"{tokens / wall:>10,.0f} tokens/s ({len(manifest['splits']['train']['shards'])} shards)", flush=True)
    for num_proc, values in rates.items():
        print(f"median  prepare num_proc={num_proc} {statistics.median(values):>10,.0f} tokens/s "
              f"(spread {min(values):,.0f}-{max(values):,.0f})")
    print(f"ratio prepare num_proc=2 / num_proc=1: {statistics.median(rates[2]) / statistics.median(rates[1]):.2f}; "
          f"shards identical across all prepares: {len(digests) == 1}")
    return str(Path(workspace) / "prepared-1-0")


def run_mlm_blocks(raw, tokenizer):
    """run_mlm.py's preprocessing (our own code): batched map(tokenize), then map(group_texts) to 128-token blocks."""

    def tokenize_function(examples):
        # run_mlm asks for the special-tokens mask so the collator need not recompute it per batch.
        return tokenizer(examples["text"], return_special_tokens_mask=True)

    def group_texts(examples):
        # One long stream per column, cut into full blocks; the remainder of each map batch (1,000 docs) is dropped.
        joined = {key: list(itertools.chain.from_iterable(values)) for key, values in examples.items()}
        usable = len(joined["input_ids"]) // BLOCK_LENGTH * BLOCK_LENGTH
        return {key: [values[i: i + BLOCK_LENGTH] for i in range(0, usable, BLOCK_LENGTH)] for key, values in joined.items()}

    tokenized = raw.map(tokenize_function, batched=True, remove_columns=raw.column_names)
    return tokenized.map(group_texts, batched=True)


def run_reference(corpus: str, tokenizer, streaming: bool = False, max_tokens: int = 0) -> int:
    """The run_mlm.py recipe (our own code): tokenize everything, concatenate, cut 128-token blocks, collate."""
    import datasets
    import torch
    from transformers import DataCollatorForLanguageModeling

    # A fresh cache per run: otherwise load_dataset and map find the previous run's Arrow files and cost nothing.
    with tempfile.TemporaryDirectory(prefix="sslnlp-bench-hf-") as cache_dir:
        raw = datasets.load_dataset("json", data_files=corpus, split="train", cache_dir=cache_dir, streaming=streaming)
        blocks = run_mlm_blocks(raw, tokenizer)
        collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
        tokens = 0
        for batch in torch.utils.data.DataLoader(blocks, batch_size=BATCH_SIZE, collate_fn=collator):
            # attention_mask, not input ids: HF's random replacement may draw [PAD] itself.
            tokens += int(batch["attention_mask"].sum())
            if max_tokens and tokens >= max_tokens:
                break
        return tokens


def timed(function, *args, **kwargs) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()  # process_time sums all threads (the Rust tokenizer's too)
    tokens = function(*args, **kwargs)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"tokens": tokens, "wall": wall, "per_second": tokens / wall, "per_cpu_second": tokens / cpu}


def memory_child(corpus: str, tokenizer_dir: str, max_tokens: int) -> None:
    """In a fresh process: stream A over corpus (training-default shuffle buffer) and print one JSON line."""
    tokenizer = load_tokenizer(tokenizer_dir)
    before = memory_status_mb("VmRSS")
    result = timed(run_sslnlp, corpus, tokenizer, shuffle_buffer_size=2048, max_tokens=max_tokens)
    print(json.dumps({"before_mb": before, "peak_mb": memory_status_mb("VmHWM"), **result}))


def memory_status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process. Not ru_maxrss: Linux carries it over from the parent through
    fork + exec, so a child of a 600 MB parent reports at least 600 MB; VmHWM starts afresh with the new program."""
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith(field + ":")).split()[1]) / 1024


def measure_memory(corpora: list[str], tokenizer_dir: str, max_tokens: int) -> list[dict]:
    results = []
    for corpus in corpora:
        command = [sys.executable, __file__, "--memory-child", corpus, "--tokenizer", tokenizer_dir,
                   "--memory-tokens", str(max_tokens)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        result = json.loads(output.strip().splitlines()[-1])
        print(f"memory  {corpus}: peak RSS {result['peak_mb']:7.1f} MB ({result['before_mb']:.1f} MB before streaming; "
              f"{result['tokens']:,} tokens in {result['wall']:.1f} s)", flush=True)
        results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default="../shared/corpora/small.jsonl.gz", help="JSON Lines file (text field)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: train once, cache in /tmp)")
    parser.add_argument("--tokens", type=int, default=0,
                        help="stop each pass after this many tokens (0: whole file); smoke tests only, since the "
                             "non-streaming reference still tokenizes the whole file before its first batch")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each pipeline, alternated")
    parser.add_argument("--extras", action=argparse.BooleanOptionalAction, default=True,
                        help="also time sslnlp with shuffle_buffer_size=2048 and the streaming reference")
    parser.add_argument("--prepared", action=argparse.BooleanOptionalAction, default=True,
                        help="time sslnlp prepare (1 and 2 processes) and training from its shards")
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True, help="run the memory part")
    parser.add_argument("--memory-corpus", default="../shared/corpora/train.jsonl.xz", help="the large corpus")
    parser.add_argument("--memory-tokens", type=int, default=0, help="cap each memory pass (0: whole file)")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)  # internal: one memory pass
    args = parser.parse_args()
    if args.memory_child:
        return memory_child(args.memory_child, args.tokenizer, args.memory_tokens)

    import datasets
    import transformers

    datasets.disable_progress_bars()  # the bars would bury the result lines
    started = time.perf_counter()
    tokenizer, tokenizer_dir = get_tokenizer(args.corpus, args.tokenizer)
    print(f"tokenizer {type(tokenizer).__name__}, {len(tokenizer)} tokens ({tokenizer_dir}); transformers "
          f"{transformers.__version__}, datasets {datasets.__version__}; corpus {args.corpus}", flush=True)
    pipelines = {"sslnlp": lambda: run_sslnlp(args.corpus, tokenizer, 0, args.tokens),
                 "reference": lambda: run_reference(args.corpus, tokenizer, False, args.tokens)}
    workspace = tempfile.TemporaryDirectory(prefix="sslnlp-bench-prepared-")
    if args.prepared:
        prepared = time_prepare(args.corpus, tokenizer_dir, args.repeats, workspace.name)
        pipelines["prepared"] = lambda: run_prepared(prepared, tokenizer, 0, args.tokens)
    if args.extras:
        pipelines["sslnlp shuffle=2048"] = lambda: run_sslnlp(args.corpus, tokenizer, 2048, args.tokens)
        if args.prepared:
            pipelines["prepared shuffle=2048"] = lambda: run_prepared(prepared, tokenizer, 2048, args.tokens)
        pipelines["reference streaming"] = lambda: run_reference(args.corpus, tokenizer, True, args.tokens)
    results: dict[str, list[dict]] = {name: [] for name in pipelines}
    for repeat in range(args.repeats):
        for name, pipeline in pipelines.items():  # alternate, so slow spells on the shared machine hit all pipelines
            result = timed(pipeline)
            results[name].append(result)
            print(f"run {repeat + 1} {name:20s} {result['tokens']:>10,} tokens {result['wall']:6.2f} s "
                  f"{result['per_second']:>10,.0f} tokens/s {result['per_cpu_second']:>10,.0f} tokens/CPU-s", flush=True)

    if args.memory:
        small, large = measure_memory([args.corpus, args.memory_corpus], tokenizer_dir, args.memory_tokens)
        difference = large["peak_mb"] - small["peak_mb"]
        print(f"memory  peak RSS difference (large - small): {difference:+.1f} MB "
              f"({'within' if abs(difference) < 150 else 'OVER'} the 150 MB target)")

    medians = {name: statistics.median(r["per_second"] for r in runs) for name, runs in results.items()}
    cpu_medians = {name: statistics.median(r["per_cpu_second"] for r in runs) for name, runs in results.items()}
    for name in results:
        print(f"median  {name:20s} {medians[name]:>10,.0f} tokens/s {cpu_medians[name]:>10,.0f} tokens/CPU-s")
    if args.extras:
        print(f"ratio sslnlp shuffle=2048 / reference tokens/s: {medians['sslnlp shuffle=2048'] / medians['reference']:.2f}")
        print(f"ratio sslnlp / reference streaming tokens/s: {medians['sslnlp'] / medians['reference streaming']:.2f}")
    print(f"ratio sslnlp/reference tokens/CPU-s: {cpu_medians['sslnlp'] / cpu_medians['reference']:.2f}")
    if args.prepared:
        print(f"ratio prepared / sslnlp (streaming) tokens/s: {medians['prepared'] / medians['sslnlp']:.2f} "
              "(target: at least 10)")
        print(f"ratio prepared / reference tokens/s: {medians['prepared'] / medians['reference']:.2f}")
        if args.extras:
            print(f"ratio prepared shuffle=2048 / sslnlp shuffle=2048 tokens/s: "
                  f"{medians['prepared shuffle=2048'] / medians['sslnlp shuffle=2048']:.2f}")
    workspace.cleanup()
    print(f"total wall time {time.perf_counter() - started:.0f} s")
    print(f"ratio sslnlp/reference tokens/s: {medians['sslnlp'] / medians['reference']:.2f}")


if __name__ == "__main__":
    main()
