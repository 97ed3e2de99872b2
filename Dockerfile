# memgate's gateway image: FastAPI, no torch.
#
#   docker build -t memgate/gateway:0.1.0 .
#
# The embedder's image has a file of its own (embedder.Dockerfile), so that building one
# image never builds the other's stages, with or without BuildKit.
#
# Dependencies come from requirements/gateway.txt, every package pinned with its sha256
# (`make lock` regenerates it; docs/deployment.md). They are installed in a stage of their
# own whose virtualenv the final stage copies: a private index given as
# --build-arg PIP_INDEX_URL=... is used there and never appears in the final image's
# `docker history`.

ARG PYTHON_IMAGE=python:3.11-slim

# --------------------------------------------------------------------------- base
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app
RUN groupadd --system --gid 10001 memgate \
 && useradd --system --uid 10001 --gid memgate --create-home --home-dir /home/memgate \
      --shell /usr/sbin/nologin memgate
WORKDIR /app

# --------------------------------------------------------------------------- dependencies
FROM base AS gateway-deps
ARG PIP_INDEX_URL=https://pypi.org/simple
COPY requirements/gateway.txt /tmp/requirements.txt
# A virtualenv: the base image's own Python may be managed by the OS (PEP 668). Exactly
# the locked files (--require-hashes, --no-deps).
RUN python3 -m venv /opt/venv \
 && pip install --no-compile --require-hashes --no-deps -r /tmp/requirements.txt \
 && pip check \
 && python -c "import importlib.util as u, sys; heavy = [m for m in ('torch', 'transformers', 'sentence_transformers', 'vllm', 'llama_cpp') if u.find_spec(m)]; sys.exit(f'inference libraries in the gateway image: {heavy}' if heavy else 0)"
# Then the virtualenv is trimmed as it will ship (docker/slim-venv.sh: pip, test suites,
# headers, stubs, bytecode, debug symbols), in a layer of its own so that changing the
# trimming does not download the packages again.
COPY docker/slim-venv.sh /tmp/slim-venv.sh
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends binutils >/dev/null \
 && sh /tmp/slim-venv.sh /opt/venv

# --------------------------------------------------------------------------- runtime
# What the image runs on, gathered from the base image by docker/runtime_root.py: the
# interpreter, its standard library, the system libraries they and the virtualenv load
# (ldd), the CA bundle, and the root and memgate user entries. The base's shell, package
# manager, Perl and docs stay behind: they are most of its size, and none of it runs.
FROM base AS gateway-runtime
COPY --from=gateway-deps /opt/venv /opt/venv
COPY docker/runtime_root.py /tmp/runtime_root.py
RUN python /tmp/runtime_root.py /runtime --links-of /opt/venv --user memgate

# --------------------------------------------------------------------------- gateway
# From nothing: the runtime, then the virtualenv, then the code, so that editing the code
# rebuilds only the last layers. There is no shell in this image, so every RUN,
# HEALTHCHECK and CMD is in exec form (a shell form would need /bin/sh).
FROM scratch AS gateway
COPY --from=gateway-runtime /runtime /
COPY --from=gateway-deps /opt/venv /opt/venv
# The package runs from /app (PYTHONPATH): nothing to build, no build backend to fetch.
COPY gateway /app/gateway
ENV PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin \
    VIRTUAL_ENV=/opt/venv \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    GATEWAY_DATA_DIR=/data
WORKDIR /app
# Importing the server once with bytecode writing on compiles exactly what it imports
# (the standard library's too: the official base ships no bytecode). It also proves that
# the trimmed libraries load in this runtime: numpy, grpc, qdrant_edge, uvloop, aiohttp,
# SQLite, TLS. Then the folders the service user writes.
RUN ["python", "-c", "import sys; sys.dont_write_bytecode = False; import gateway.__main__, numpy, grpc, qdrant_client, qdrant_edge, aiohttp, yaml, sqlite3, ssl, uvicorn.loops.uvloop, uvicorn.protocols.http.httptools_impl; ssl.create_default_context(); import compileall, os; compileall.compile_dir('/app/gateway', quiet=1) or sys.exit('gateway: compileall failed'); [(os.makedirs(d), os.chown(d, 10001, 10001)) for d in ('/data', '/home/memgate')]"]
USER memgate
EXPOSE 8080
# /livez, not /readyz: an upstream that is still loading must not mark the gateway unhealthy.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('GATEWAY_PORT', '8080'), timeout=4)"]
CMD ["python", "-m", "gateway"]
