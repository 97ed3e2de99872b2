#!/usr/bin/env bash
# run_cpu.sh's layout for the revision before issue 18 (staged by hand:
# git archive 3261274 gateway embedder | tar -x -C DIR/before).
set -euo pipefail
DIR=$(cd "$1" && pwd)
OUT=$2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$DIR"/whl/*.whl
export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
cd "$DIR/src"
python3 -m bench.gpu.pack_weights unpack "$DIR/minilm" /tmp/minilm32 float32
python3 -m bench.memory_turns --variant "before=$DIR/before" --users 10 --seed-memories 200 \
    --recall-rate 10 --rounds 3 --seconds 15 --rates 10,15,20,30 --import-memories 1024 \
    --import-batch 64 --proxy-cpus 0 --gen-cpus 0 --embedder-cpus 1 \
    --embedder-env EMBEDDER_MODEL=/tmp/minilm32 --embedder-env EMBEDDER_DEVICE=cpu \
    --out "$OUT/memory_turns_quiet_cpu_before.json"
