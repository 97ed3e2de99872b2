#!/usr/bin/env bash
# `make run`: the embedded default stack on one machine, without Docker.
#   1. the embedder (python -m embedder), waited for until its model is loaded;
#   2. the gateway (python -m gateway) with Qdrant Edge in-process under
#      GATEWAY_DATA_DIR, talking to the LLM at GATEWAY_LLM_URL.
# Ctrl-C stops both. Settings come from the environment and from the GATEWAY_* and
# EMBEDDER_* lines of .env, as in compose (the environment wins; see .env.example).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
eval "$("$PY" tools/env_file.py .env)"
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
export EMBEDDER_PORT=${EMBEDDER_PORT:-8081}
export GATEWAY_EMBEDDER_URL=${GATEWAY_EMBEDDER_URL:-http://127.0.0.1:${EMBEDDER_PORT}/v1}
export GATEWAY_LLM_URL=${GATEWAY_LLM_URL:-http://localhost:8000/v1}

"$PY" -m embedder &
embedder=$!
trap 'kill "$embedder" 2>/dev/null; wait "$embedder" 2>/dev/null' EXIT INT TERM

echo "memgate: waiting for the embedder on :${EMBEDDER_PORT} to load its model..." >&2
for _ in $(seq 1 240); do
  if ! kill -0 "$embedder" 2>/dev/null; then
    echo "memgate: the embedder exited; see its log above" >&2
    exit 1
  fi
  if "$PY" -c "import httpx,sys; sys.exit(httpx.get('http://127.0.0.1:${EMBEDDER_PORT}/health').status_code != 200)" 2>/dev/null; then
    break
  fi
  sleep 0.5
done

echo "memgate: gateway on ${GATEWAY_HOST:-127.0.0.1}:${GATEWAY_PORT:-8080}, LLM at ${GATEWAY_LLM_URL}" >&2
"$PY" -m gateway
