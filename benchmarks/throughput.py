"""Pretraining throughput: sslnlp's pretrain() vs the Hugging Face reference pipeline: tokens/s, MFU, peak memory.

    python benchmarks/throughput.py --precision fp32                  # tiny BERT on the CPU, both in fp32
    python benchmarks/throughput.py --precision bf16                  # tiny BERT on the CPU, both in bf16 autocast
    python benchmarks/throughput.py --precision defaults              # sslnlp's defaults vs Trainer's defaults (fp32)
    python benchmarks/throughput.py --model base --precision bf16 --steps 4 --warmup 2 --repeats 2   # BERT-base, CPU
    python benchmarks/throughput.py --device cuda                     # one GPU: BERT-base, bf16 (under 5 minutes)
    python benchmarks/throughput.py --loss-check 300                  # loss trajectories side by side (fp32)
    python benchmarks/throughput.py --compile --model cram --precision bf16   # sslnlp, torch_compile off vs on

Run from the repository root. Both pipelines train the same BERT (tiny: hidden 256, 4 layers, 4 heads, intermediate
1024; base: 768, 12, 12, 3072; max_position_embeddings 512), initialised from the same seed, on
``../shared/corpora/small.jsonl.gz`` with the same WordPiece tokenizer (30,522 tokens, trained once and cached under
/tmp, or --tokenizer DIR), batch 32, sequence 128, at the same precision:

  A  sslnlp:    sslnlp.pretrain(PretrainConfig(...)): packed blocks, sparse masked-LM head, its own loop.
  B  reference: transformers Trainer + DataCollatorForLanguageModeling(mlm_probability=0.15) on a run_mlm-style
                dataset (load_dataset('json') -> batched map(tokenize) -> map(group_texts) to 128-token blocks).

Every measurement runs in its own fresh subprocess (peak RSS and thread pools never leak between runs), alternating
A B A B (the machine may be shared: neighbours slow whichever run they overlap). Only steady-state steps count: the
first --warmup steps of each run are dropped. A run's tokens/s is its steady-state tokens over their wall time, step
by step: sslnlp's from metrics.jsonl (logging_steps=1: per-step tokens, elapsed, data-wait fraction; the final
checkpoint and export come after the last step and are not timed); the reference's from a TrainerCallback, step end
to step end (the interval holds its data loading, as sslnlp's step holds its own). MFU uses
sslnlp.models.modeling.flops_per_token with each pipeline's predicted fraction (reference: the full head, 1.0; sslnlp:
mlm_probability) over one peak measured once in the parent (CPU: a bf16 or fp32 matmul; GPU: the table of known
peaks). The reference's dataset is built once (not timed) and cached under /tmp. The last line is the ratio of the
median tokens/s.

``--compile`` compares sslnlp with ``training.torch_compile`` off (A) and on (B) instead, alternated the same way:
steady-state tokens/s of each, and the compile time apart: the compiled run's first --warmup steps minus the
uncompiled run's (their medians). ``--model cram`` is recipes/cram-cpu.yaml's ModernBERT (read from the recipe).
The last lines say whether compiling pays within a 20-minute run: the steady-state saving over 1,200 s against the
compile time.

``--precision defaults`` compares what each gives without tuning: sslnlp's defaults (mixed_precision auto -> bf16
on CPUs with AVX-512 BF16 / AMX, sparse prediction, its vocabulary rounded up to a multiple of 64) against
TrainingArguments' defaults (fp32, lr 5e-5). fp32 / bf16 compare the same precision, the same vocabulary (30,522)
and the same optimiser settings (lr 5e-4, weight decay 0.01, betas 0.9 / 0.98, eps 1e-6, 6% warmup, clipping 1.0).
"""

from __future__ import annotations

import argparse
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
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # both loops' progress bars: their output would bury the result lines
# Run as a file, sys.path[0] is benchmarks/; put the checkout first so we measure this tree's sslnlp.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BLOCK_LENGTH, BATCH_SIZE, VOCAB_SIZE = 128, 32, 30522
MODELS = {
    "tiny": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024,
             "max_position_embeddings": 512},
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
             "max_position_embeddings": 512},
}
# sslnlp's training defaults, given to the reference too when both run at the same precision.
MATCHED_OPTIMIZER = {"learning_rate": 5e-4, "weight_decay": 0.01, "adam_beta1": 0.9, "adam_beta2": 0.98,
                     "adam_epsilon": 1e-6, "max_grad_norm": 1.0, "warmup_ratio": 0.06}
SEED = 42


def memory_status_mb(field: str) -> float:
    """VmHWM (peak RSS) of this process. Not ru_maxrss: Linux carries it over from the parent through fork + exec."""
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith(field + ":")).split()[1]) / 1024


def reference_dataset_dir(corpus: str, tokenizer_dir: str) -> Path:
    return Path(tempfile.gettempdir()) / f"sslnlp-bench-throughput-{Path(corpus).name}-{Path(tokenizer_dir).name}-{BLOCK_LENGTH}"


def build_reference_dataset(corpus: str, tokenizer_dir: str) -> str:
    """run_mlm.py's preprocessing (our own code), once: tokenize every document, concatenate, cut 128-token blocks."""
    import datasets
    from transformers import AutoTokenizer

    from data_pipeline import run_mlm_blocks  # benchmarks/ is on sys.path when run as a file

    directory = reference_dataset_dir(corpus, tokenizer_dir)
    if (directory / "dataset_info.json").exists():
        return str(directory)
    print(f"building the reference dataset (run_mlm-style, not timed) -> {directory}", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

    with tempfile.TemporaryDirectory(prefix="sslnlp-bench-hf-") as cache_dir:
        raw = datasets.load_dataset("json", data_files=corpus, split="train", cache_dir=cache_dir)
        run_mlm_blocks(raw, tokenizer).save_to_disk(str(directory))
    return str(directory)


# ---------------------------------------------------------------------------------------------- the two children


def cram_model() -> dict:
    """recipes/cram-cpu.yaml's model section: {"model_type": ..., "config_overrides": {...}}."""
    import yaml

    return yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes" / "cram-cpu.yaml").read_text())["model"]


def child_sslnlp(spec: dict) -> dict:
    """One sslnlp run through pretrain(); per-step figures from its metrics.jsonl."""
    from sslnlp.config import DataConfig, ModelConfig, PretrainConfig, TokenizerConfig, TrainingConfig
    from sslnlp.objectives import get_objective
    from sslnlp.training.loop import pretrain

    defaults = spec["precision"] == "defaults"
    with tempfile.TemporaryDirectory(prefix="sslnlp-bench-run-") as output_dir:
        model = ModelConfig(model_type=spec.get("model_type", "bert"), config_overrides=dict(spec["model"]))
        training = TrainingConfig(per_device_train_batch_size=spec["batch_size"], max_steps=spec["steps"],
                                  logging_steps=1, save_steps=0, peak_flops=spec["peak_flops"], seed=spec["seed"],
                                  torch_compile=spec.get("torch_compile", False))
        if not defaults:
            model.pad_vocab_to_multiple_of = 1  # the reference's vocabulary exactly: the same model
            training.mixed_precision = {"fp32": "no", "bf16": "bf16"}[spec["precision"]]
            training.learning_rate = spec["learning_rate"]
        data = DataConfig(train_files=spec["corpus"], max_seq_length=spec["sequence_length"])
        objective = get_objective("mlm").Config()
        for key, value in spec.get("sslnlp_overrides", {}).items():  # experiments: section.key=value
            section, name = key.split(".")
            section_object = {"data": data, "objective": objective, "model": model, "training": training}.get(section)
            if section_object is None or not hasattr(section_object, name):
                raise ValueError(f"override {key}: not a data.*, objective.*, model.* or training.* setting")
            setattr(section_object, name, value)
        config = PretrainConfig(output_dir=output_dir, data=data, objective=objective, model=model, training=training,
                                tokenizer=TokenizerConfig(tokenizer_name_or_path=spec["tokenizer_dir"]))
        started = time.perf_counter()
        summary = pretrain(config)
        total = time.perf_counter() - started
        records = [json.loads(line) for line in open(Path(output_dir) / "metrics.jsonl")]
    records = [r for r in records if "tokens_per_second" in r]
    steps, previous_elapsed, previous_tokens = [], 0.0, 0
    for record in records:  # logging_steps=1: one record per step
        steps.append({"seconds": record["elapsed"] - previous_elapsed, "tokens": record["tokens"] - previous_tokens,
                      "loss": record["loss"], "data_wait": record["data_wait_fraction"] * (record["elapsed"] - previous_elapsed)})
        previous_elapsed, previous_tokens = record["elapsed"], record["tokens"]
    return {"steps": steps, "process_seconds": total, "mixed_precision": summary["mixed_precision"],
            **device_memory(spec)}


def child_reference(spec: dict) -> dict:
    """One reference run: Trainer + DataCollatorForLanguageModeling on the cached run_mlm-style blocks."""
    import datasets
    import torch
    from transformers import (AutoTokenizer, BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling, Trainer,
                              TrainerCallback, TrainingArguments, set_seed)

    cuda = spec["device"] == "cuda"

    class StepTimer(TrainerCallback):
        """Wall-clock step ends (data loading included, as in sslnlp's step), step begins, and logged losses."""

        def __init__(self):
            self.begins, self.ends, self.losses = [], [], []

        def on_train_begin(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())  # "step 0 ends" when the loop starts

        def on_step_begin(self, args, state, control, **kwargs):
            self.begins.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(logs["loss"])

    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer_dir"])
    blocks = datasets.load_from_disk(spec["dataset_dir"])
    set_seed(spec["seed"])  # the seed sslnlp draws its initial weights after
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **spec["model"]))
    defaults = spec["precision"] == "defaults"
    arguments = {"output_dir": tempfile.mkdtemp(prefix="sslnlp-bench-trainer-"), "per_device_train_batch_size": spec["batch_size"],
                 "max_steps": spec["steps"], "report_to": [], "save_strategy": "no", "logging_steps": 1,
                 "use_cpu": not cuda, "bf16": spec["precision"] == "bf16", "seed": spec["seed"]}
    if not defaults:
        matched = dict(MATCHED_OPTIMIZER, learning_rate=spec["learning_rate"])
        arguments.update({k: v for k, v in matched.items() if k != "warmup_ratio"}, warmup_steps=matched["warmup_ratio"])
    timer = StepTimer()
    trainer = Trainer(model=model, args=TrainingArguments(**arguments), train_dataset=blocks,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15), callbacks=[timer])
    started = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - started
    tokens = spec["batch_size"] * spec["sequence_length"]  # group_texts blocks: no padding
    steps = [{"seconds": end - previous, "compute_seconds": end - begin, "tokens": tokens, "loss": loss}
             for previous, end, begin, loss in zip(timer.ends[:-1], timer.ends[1:], timer.begins, timer.losses)]
    return {"steps": steps, "process_seconds": total, "mixed_precision": "bf16" if arguments["bf16"] else "no",
            **device_memory(spec)}


def device_memory(spec: dict) -> dict:
    memory = {"peak_rss_mb": memory_status_mb("VmHWM")}
    if spec["device"] == "cuda":
        import torch

        memory["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return memory


# ------------------------------------------------------------------------------------------------------ parent


def run_child(spec: dict) -> dict:
    command = [sys.executable, __file__, "--child", json.dumps(spec)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-8000:])
        raise SystemExit(f"the {spec['pipeline']} run failed (exit {result.returncode})")
    return json.loads(result.stdout.strip().splitlines()[-1])


def steady_state(result: dict, warmup: int) -> dict:
    """Tokens/s over the steps after the warmup: their tokens over their summed wall time (and the per-step median)."""
    steps = result["steps"][warmup:]
    if not steps:
        raise SystemExit(f"no steady-state steps: --steps must exceed --warmup ({warmup})")
    seconds = sum(s["seconds"] for s in steps)
    tokens = sum(s["tokens"] for s in steps)
    figures = {"tokens_per_second": tokens / seconds, "step_median_ms": 1000 * statistics.median(s["seconds"] for s in steps),
               "steps": len(steps)}
    if "data_wait" in steps[0]:
        figures["data_wait_fraction"] = sum(s["data_wait"] for s in steps) / seconds
    if "compute_seconds" in steps[0]:
        figures["data_wait_fraction"] = 1 - sum(s["compute_seconds"] for s in steps) / seconds
    return figures


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def measure_peak_flops(device: str, precision: str) -> float:
    import torch

    from sslnlp.models.modeling import peak_flops_per_second

    return peak_flops_per_second(torch.device(device), "no" if precision == "fp32" else "bf16")


def model_flops(spec: dict, predicted_fraction: float) -> float:
    from transformers import AutoConfig

    from sslnlp.models.modeling import flops_per_token

    config = AutoConfig.for_model(spec.get("model_type", "bert"), vocab_size=VOCAB_SIZE, **spec["model"])
    return flops_per_token(config, spec["sequence_length"], predicted_fraction)


def compare_compile(args, base_spec: dict) -> None:
    """sslnlp with torch_compile off and on, alternated: steady-state tokens/s, and the compile time apart."""
    peak = measure_peak_flops(args.device, "bf16" if args.precision == "bf16" else "fp32")
    base_spec["peak_flops"] = peak
    from sslnlp.objectives import get_objective

    flops = model_flops(base_spec, get_objective("mlm").Config().mlm_probability)  # the runs' sparse head
    print(f"peak {peak / 1e12:.2f} TFLOP/s; load average {load_average()}", flush=True)
    arms = {"eager": [], "compiled": []}
    for repeat in range(args.repeats):
        for arm in arms:
            result = run_child(dict(base_spec, pipeline="sslnlp", torch_compile=arm == "compiled"))
            figures = steady_state(result, args.warmup)
            figures["first_steps_seconds"] = sum(step["seconds"] for step in result["steps"][:args.warmup])
            figures["process_seconds"] = result["process_seconds"]
            arms[arm].append(figures)
            print(f"run {repeat + 1} {arm:8s} {figures['tokens_per_second']:>9,.0f} tokens/s step median "
                  f"{figures['step_median_ms']:7.1f} ms MFU {100 * figures['tokens_per_second'] * flops / peak:5.1f}% "
                  f"first {args.warmup} steps {figures['first_steps_seconds']:6.1f} s, process "
                  f"{figures['process_seconds']:6.1f} s", flush=True)
    median = {arm: {key: statistics.median(run[key] for run in runs) for key in runs[0]} for arm, runs in arms.items()}
    for arm, m in median.items():
        spread = [run["tokens_per_second"] for run in arms[arm]]
        print(f"median {arm:8s} {m['tokens_per_second']:>9,.0f} tokens/s (spread {min(spread):,.0f}-{max(spread):,.0f}) "
              f"MFU {100 * m['tokens_per_second'] * flops / peak:5.1f}%, first {args.warmup} steps "
              f"{m['first_steps_seconds']:.1f} s")
    compile_seconds = median["compiled"]["first_steps_seconds"] - median["eager"]["first_steps_seconds"]
    speedup = median["compiled"]["tokens_per_second"] / median["eager"]["tokens_per_second"]
    saved = 1200 * (1 - 1 / speedup)  # seconds of a 20-minute eager run's work saved at the compiled rate
    print(f"ratio compiled/eager steady-state tokens/s: {speedup:.3f}; compile time {compile_seconds:.1f} s; over a "
          f"20-minute run compiling saves {saved:.0f} s of steps and costs {compile_seconds:.0f} s: "
          f"{'pays' if saved > compile_seconds else 'does not pay'} (net {saved - compile_seconds:+.0f} s)")


def compare(args, base_spec: dict) -> float:
    # 'defaults': sslnlp runs bf16 (auto) and the reference fp32; one ceiling for both, the machine's best (bf16).
    peak_precision = "bf16" if args.precision in ("bf16", "defaults") else "fp32"
    peak = measure_peak_flops(args.device, peak_precision)
    base_spec["peak_flops"] = peak
    print(f"peak {peak / 1e12:.2f} TFLOP/s ({args.device}, {peak_precision} matmul) for both MFU figures; "
          f"load average {load_average()}", flush=True)
    flops = {"sslnlp": model_flops(base_spec, 0.15), "reference": model_flops(base_spec, 1.0)}
    results: dict[str, list[dict]] = {"sslnlp": [], "reference": []}
    for repeat in range(args.repeats):
        for pipeline in ("sslnlp", "reference"):  # alternate: slow spells of a shared machine hit both
            load = load_average()
            result = run_child(dict(base_spec, pipeline=pipeline))
            figures = steady_state(result, args.warmup)
            figures.update(peak_rss_mb=result["peak_rss_mb"], peak_gpu_mb=result.get("peak_gpu_mb"),
                           mixed_precision=result["mixed_precision"], mfu=figures["tokens_per_second"] * flops[pipeline] / peak)
            results[pipeline].append(figures)
            gpu = f" peak GPU {figures['peak_gpu_mb']:,.0f} MB" if figures["peak_gpu_mb"] is not None else ""
            print(f"run {repeat + 1} {pipeline:9s} ({figures['mixed_precision']:>4s}) {figures['tokens_per_second']:>9,.0f} tokens/s "
                  f"step median {figures['step_median_ms']:7.1f} ms MFU {100 * figures['mfu']:5.1f}% data wait "
                  f"{100 * figures['data_wait_fraction']:4.1f}% peak RSS {figures['peak_rss_mb']:,.0f} MB{gpu} "
                  f"({figures['steps']} steady steps; load before {load})", flush=True)
    medians = {}
    for pipeline, runs in results.items():
        medians[pipeline] = {key: statistics.median(r[key] for r in runs)
                             for key in ("tokens_per_second", "mfu", "data_wait_fraction", "peak_rss_mb", "step_median_ms")}
        gpu = [r["peak_gpu_mb"] for r in runs if r["peak_gpu_mb"] is not None]
        m = medians[pipeline]
        print(f"median {pipeline:9s} {m['tokens_per_second']:>9,.0f} tokens/s MFU {100 * m['mfu']:5.1f}% data wait "
              f"{100 * m['data_wait_fraction']:4.1f}% peak RSS {m['peak_rss_mb']:,.0f} MB"
              + (f" peak GPU {statistics.median(gpu):,.0f} MB" if gpu else "")
              + f" (model FLOPs/token {flops[pipeline] / 1e6:.1f} M)")
    print(f"load average after: {load_average()}")
    return medians['sslnlp']['tokens_per_second'] / medians['reference']['tokens_per_second']


def loss_check(args, base_spec: dict) -> None:
    """Both pipelines for N steps at the same settings in fp32, plus sslnlp with another seed (the noise floor)."""
    spec = dict(base_spec, precision="fp32", steps=args.loss_check, learning_rate=args.learning_rate, peak_flops=0)
    curves = {}
    for name, pipeline, seed in (("sslnlp", "sslnlp", SEED), ("reference", "reference", SEED), ("sslnlp seed+1", "sslnlp", SEED + 1)):
        started = time.perf_counter()
        result = run_child(dict(spec, pipeline=pipeline, seed=seed))
        curves[name] = [s["loss"] for s in result["steps"]]
        print(f"{name}: {len(curves[name])} steps in {time.perf_counter() - started:.0f} s (load {load_average()})", flush=True)
    window = max(1, args.loss_check // 10)
    print(f"mean loss per {window}-step window (fp32, lr {args.learning_rate:g}, batch {base_spec['batch_size']} x "
          f"{base_spec['sequence_length']}):")
    print(f"{'steps':>11s} {'sslnlp':>8s} {'reference':>10s} {'sslnlp seed+1':>14s} {'|sslnlp-ref|':>13s} {'|seed-seed|':>12s}")
    gaps, noise = [], []
    for start in range(0, args.loss_check, window):
        mean = {name: statistics.fmean(curve[start: start + window]) for name, curve in curves.items()}
        gaps.append(abs(mean["sslnlp"] - mean["reference"]))
        noise.append(abs(mean["sslnlp"] - mean["sslnlp seed+1"]))
        print(f"{start + 1:>5d}-{start + window:<5d} {mean['sslnlp']:8.3f} {mean['reference']:10.3f} "
              f"{mean['sslnlp seed+1']:14.3f} {gaps[-1]:13.3f} {noise[-1]:12.3f}")
    print(f"largest window gap sslnlp vs reference {max(gaps):.3f} nats; sslnlp seed vs seed {max(noise):.3f} nats")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precision", choices=("fp32", "bf16", "defaults"), default=None,
                        help="both in fp32, both in bf16 autocast, or each pipeline's defaults (default: bf16 on "
                             "--device cuda, else fp32)")
    parser.add_argument("--model", choices=tuple(MODELS) + ("cram",), default=None,
                        help="tiny (default on CPU), base (default on cuda) or cram (recipes/cram-cpu.yaml's ModernBERT)")
    parser.add_argument("--compile", action="store_true", help="sslnlp with training.torch_compile off vs on")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="steps per run, warmup included (default 35; cuda 60)")
    parser.add_argument("--warmup", type=int, default=None, help="first steps of each run left out (default 5; cuda 10)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each pipeline, alternated")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--learning-rate", type=float, default=5e-4, help="both pipelines' peak lr (not 'defaults')")
    parser.add_argument("--loss-check", type=int, default=0, metavar="STEPS",
                        help="instead: run both for STEPS steps in fp32 and print windowed mean losses side by side")
    parser.add_argument("--sslnlp-override", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="experiments: change a data.* / objective.* / model.* / training.* setting of the sslnlp "
                             "side (e.g. training.torch_compile=true, data.num_workers=1); repeatable")
    parser.add_argument("--corpus", default="../shared/corpora/small.jsonl.gz", help="JSON Lines file (text field)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: train once, cache in /tmp)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: one measurement, JSON spec
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        result = child_sslnlp(spec) if spec["pipeline"] == "sslnlp" else child_reference(spec)
        print(json.dumps(result))
        return

    cuda = args.device == "cuda"
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    args.model = args.model or ("base" if cuda else "tiny")
    args.steps = args.steps or (60 if cuda else 35)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 5)
    if cuda:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no GPU visible to torch")
    import yaml

    from data_pipeline import get_tokenizer  # the shared cached WordPiece tokenizer (benchmarks/ is sys.path[1])

    started = time.perf_counter()
    tokenizer, tokenizer_dir = get_tokenizer(args.corpus, args.tokenizer)
    dataset_dir = build_reference_dataset(args.corpus, tokenizer_dir)
    overrides = {}
    for item in args.sslnlp_override:
        key, value = item.split("=", 1)
        overrides[key] = yaml.safe_load(value)
    import torch
    import transformers

    if args.model == "cram":
        MODELS["cram"] = cram_model()["config_overrides"]
    print(f"{args.model} {MODELS[args.model]}, vocabulary {len(tokenizer)}, batch {args.batch_size} x {BLOCK_LENGTH}, "
          f"{args.device}, precision {args.precision}; {args.repeats} x {args.steps} steps, first {args.warmup} left "
          f"out; torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}"
          + (f"; sslnlp overrides {overrides}" if overrides else ""), flush=True)
    base_spec = {"model": MODELS[args.model], "model_type": cram_model()["model_type"] if args.model == "cram" else "bert",
                 "batch_size": args.batch_size, "sequence_length": BLOCK_LENGTH,
                 "steps": args.steps, "precision": args.precision, "device": args.device, "corpus": args.corpus,
                 "tokenizer_dir": tokenizer_dir, "dataset_dir": dataset_dir, "learning_rate": args.learning_rate,
                 "seed": SEED, "sslnlp_overrides": overrides}
    if args.compile:
        compare_compile(args, base_spec)
        print(f"total wall time {time.perf_counter() - started:.0f} s")
        return
    if args.loss_check:
        loss_check(args, base_spec)
        print(f"total wall time {time.perf_counter() - started:.0f} s")
        return
    ratio = compare(args, base_spec)
    print(f"total wall time {time.perf_counter() - started:.0f} s")
    print(f"ratio sslnlp/reference tokens/s: {ratio:.2f}")


if __name__ == "__main__":
    main()
