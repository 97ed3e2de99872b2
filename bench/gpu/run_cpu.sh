#!/usr/bin/env bash
# Issue 18's CPU goals on a quiet machine: the device machine's CPUs, laid out
# as on the 2-core dev box (gateway, stand-in LLM and load generator on core 0,
# the embedder alone on core 1 with one ONNX Runtime thread, int8 weights),
# while the shared dev box was too loaded to confirm them. Same staging as
# run.sh; there: bash DIR/src/bench/gpu/run_cpu.sh DIR OUT.
set -euo pipefail
DIR=$(cd "$1" && pwd)
OUT=$2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$DIR"/whl/*.whl
export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
lscpu | grep -E 'Model name|Flags' | grep -o -E 'Model name.*|avx512_vnni|amx_int8' | sort -u
cd "$DIR/src"
python3 -m bench.gpu.pack_weights unpack "$DIR/minilm" /tmp/minilm32 float32
python3 -m bench.memory_turns --users 10 --seed-memories 200 --recall-rate 10 --rounds 3 \
    --seconds 15 --rates 30,45,60,75,90,120 --import-memories 5120 --import-batch 256 \
    --proxy-cpus 0 --gen-cpus 0 --embedder-cpus 1 \
    --embedder-env EMBEDDER_MODEL=/tmp/minilm32 --embedder-env EMBEDDER_DEVICE=cpu \
    --out "$OUT/memory_turns_quiet_cpu.json"
