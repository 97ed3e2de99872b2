#!/usr/bin/env bash
# The GPU figures of issue 18, on the device machine (one H200, 16 cores).
#
# Here, once: bench/gpu/stage.sh DIR (code, wheels for Python 3.12, the packed
# weights); there: bash DIR/src/bench/gpu/run.sh DIR OUT. Runs the embedder's
# encoder and service on CUDA (bench/gpu/embedder_gpu.py), then memory-on chat
# turns with the gateway, the embedder (torch on CUDA, from CUDA graphs: its
# default) and the stand-in LLM on that machine (bench/memory_turns.py); with
# ENCODE_TOO=1 the recall part again with EMBEDDER_CUDA_GRAPHS=false, for the
# side-by-side on the same card.
set -euo pipefail
DIR=$(cd "$1" && pwd)
OUT=$2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$DIR"/whl/*.whl
export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))'
cd "$DIR/src"
python3 -m bench.gpu.pack_weights unpack "$DIR/minilm" /tmp/minilm
[ -n "${SKIP_EMBEDDER_BENCH:-}" ] || python3 -m bench.gpu.embedder_gpu /tmp/minilm --seconds 8 --out "$OUT/embedder_gpu.json"
python3 -m bench.memory_turns --parts recall,sustained,import --rates 100,200,300,400 --recall-rate 20 --rounds 2 \
    --seconds 8 --users 20 --seed-memories 200 --import-memories 10240 --import-batch 256 \
    --proxy-cpus 0 --embedder-cpus 1-2 --gen-cpus 3-4 \
    --embedder-env EMBEDDER_DEVICE=cuda --embedder-env EMBEDDER_MODEL=/tmp/minilm \
    --out "$OUT/memory_turns_gpu.json"
[ -z "${ENCODE_TOO:-}" ] || python3 -m bench.memory_turns --parts recall --recall-rate 20 --rounds 2 \
    --seconds 8 --users 20 --seed-memories 200 --proxy-cpus 0 --embedder-cpus 1-2 --gen-cpus 3-4 \
    --embedder-env EMBEDDER_DEVICE=cuda --embedder-env EMBEDDER_MODEL=/tmp/minilm \
    --embedder-env EMBEDDER_CUDA_GRAPHS=false --out "$OUT/memory_turns_gpu_encode.json"
