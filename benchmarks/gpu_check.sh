#!/usr/bin/env bash
# The GPU check: what sslnlp does on one GPU, in under 10 minutes, from the repository root, offline.
#
#   bash benchmarks/gpu_check.sh                      # on a machine with one NVIDIA GPU; results in runs/gpu-check
#   OUT=/somewhere bash benchmarks/gpu_check.sh       # results there (the device tool's $OUT)
#   DEVICE=cpu bash benchmarks/gpu_check.sh           # a rehearsal of the script on a CPU (tiny model, few steps)
#
# 1. benchmarks/throughput.py --device cuda: BERT-base, bf16, sslnlp's pretrain() against the Hugging Face Trainer
#    pipeline (tokens/s, MFU, peak GPU memory), alternated.
# 2. benchmarks/throughput.py --compile: sslnlp with training.torch_compile off and on (steady-state tokens/s; the
#    compile time apart; whether it pays within 20 minutes).
# 3. recipes/cram-gpu.yaml for CRAM_SECONDS of training on the corpus below: tokens/s and MFU against the GPU's dense
#    bf16 peak (sslnlp's table of known GPUs: H100 SXM 989 TFLOP/s, H200 the same chip).
#
# The corpus is Python's own docstrings (sslnlp:python-docs, bundled with sslnlp: nothing is downloaded), written
# as JSON Lines. Packages: torch, transformers, tokenizers, accelerate, datasets (datasets is not on the lent GPU
# machines' image: carry it as wheels, see ../.library/device/README.md; a .whl folder in the repository root is
# installed first when present). Every part has its own time limit, so one that hangs leaves the others' results.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-runs/gpu-check}
CRAM_SECONDS=${CRAM_SECONDS:-90}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1
PYTHON=${PYTHON:-python3}
if [ -d .whl ]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
"$PYTHON" -c "import torch, transformers, tokenizers, accelerate, datasets, sslnlp" || {
  echo "gpu_check: a package is missing (see the header)"; exit 1; }
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  "$PYTHON" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
'device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"; } | tee "$OUT/machine.txt"

corpus="$OUT/corpus.jsonl"
"$PYTHON" - "$corpus" <<'EOF'
import json, sys
import sslnlp
with open(sys.argv[1], "w") as handle:
    for text in sslnlp.load_corpus("sslnlp:python-docs"):
        handle.write(json.dumps({"text": text}) + "\n")
EOF
echo "corpus: $(wc -l < "$corpus") documents, $(du -h "$corpus" | cut -f1)"

if [ "$DEVICE" = cuda ]; then  # about 3 + 3 + 3.5 minutes at most
  throughput=(--device cuda --model base --precision bf16 --repeats 2)
  compiled=(--device cuda --model base --precision bf16 --steps 60 --warmup 15 --repeats 1)
  cram=()
  limit=200
else  # rehearsal of the script on a CPU: the tiny model, few steps, a small cram model
  throughput=(--device cpu --model tiny --precision bf16 --steps 8 --warmup 2 --repeats 1)
  compiled=(--device cpu --model tiny --precision bf16 --steps 8 --warmup 2 --repeats 1)
  cram=("model.config_overrides={hidden_size: 128, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 256,
        max_position_embeddings: 128}" training.per_device_train_batch_size=8 data.num_workers=0
        tokenizer.vocab_size=4096 tokenizer.training_documents=2000)
  limit=900
fi

echo "== 1. throughput: sslnlp against the Trainer pipeline"
timeout $limit "$PYTHON" benchmarks/throughput.py "${throughput[@]}" --corpus "$corpus" 2>&1 | tee "$OUT/throughput.txt"
echo "== 2. torch.compile off and on"
timeout $limit "$PYTHON" benchmarks/throughput.py "${compiled[@]}" --compile --corpus "$corpus" 2>&1 | tee "$OUT/compile.txt"
echo "== 3. recipes/cram-gpu.yaml for ${CRAM_SECONDS} s"
timeout $((CRAM_SECONDS + 120)) "$PYTHON" -m sslnlp pretrain recipes/cram-gpu.yaml output_dir="$OUT/cram" \
  data.train_files="$corpus" data.dataset_config_name=null data.validation_files=null data.validation_holdout_every=50 \
  evaluation.probe_task=null training.max_time="$CRAM_SECONDS" training.logging_steps=20 "${cram[@]}" \
  2>&1 | tail -n 20 | tee "$OUT/cram.txt"
"$PYTHON" - "$OUT/cram/summary.json" <<'EOF' | tee -a "$OUT/cram.txt"
import json, sys
try:
    summary = json.load(open(sys.argv[1]))
except OSError:
    raise SystemExit("cram-gpu: no summary.json (the run failed or ran out of time)")
mfu = summary.get("model_flops_utilization")
print(f"cram-gpu: {summary['steps']:,} steps, {summary['tokens']:,} tokens in {summary['train_runtime']:.0f} s: "
      f"{summary['tokens_per_second']:,.0f} tokens/s, MFU {100 * mfu:.1f}% of the dense bf16 peak, "
      f"held-out loss {summary.get('eval_loss', float('nan')):.3f}" if mfu is not None else "MFU unknown")
EOF
echo "gpu_check: results in $OUT"
