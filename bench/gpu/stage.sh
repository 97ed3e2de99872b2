#!/usr/bin/env bash
# Stage what bench/gpu/run.sh needs into DIR (an ignored folder of the checkout
# the device tool sends, named in its `carry`): this tree's code, the wheels the
# machine's Python 3.12 lacks (pinned as in pyproject.toml), and the weights
# packed by bench/gpu/pack_weights.py (int8 rows; checked against fp32 there).
set -euo pipefail
DIR=$(mkdir -p "$1" && cd "$1" && pwd)
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
rm -rf "$DIR/src"
mkdir -p "$DIR/src/tests" "$DIR/whl"
(cd "$ROOT" && git ls-files -co --exclude-standard gateway embedder bench harness tests/__init__.py tests/fakes \
    | grep -v '^bench/results/' | tar -cf - -T - | tar -xf - -C "$DIR/src")
cd "$DIR/whl"
for p in fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 pydantic==2.14.3 \
    pydantic-core==2.50.4 pydantic-settings==2.16.3 tenacity==9.2.1 qdrant-edge-py==0.9.0 \
    httptools==0.9.0 typing-extensions==4.16.0 typing-inspection==0.4.5 annotated-types==0.8.0 \
    annotated-doc==0.0.7 opentelemetry-api==1.45.2 python-dotenv==1.2.4 anyio==4.16.0; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d . "$p"
done
[ -f "$DIR/minilm/weights.npz" ] || (cd "$ROOT" && .venv/bin/python -m bench.gpu.pack_weights pack "$DIR/minilm")
du -sh "$DIR"
