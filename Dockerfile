# syntax=docker/dockerfile:1.7
#
# kernelmap images, two final targets (docker-compose.yml builds both):
#
#   docker build --target api    -t kernelmap-api .     API, controller, migrations (CPU torch)
#   docker build --target worker -t kernelmap-worker .  GPU evaluation worker (CUDA torch, CuPy)
#
# Both run as the unprivileged user `kernelmap` (uid:gid 10001:10001) with
# KERNELMAP_DATA_DIR=/data and `kernelmap` as the entry point: `docker run IMAGE worker ...`
# and `docker run IMAGE kernelmap worker ...` are the same. Nothing secret is baked in:
# database and broker URLs, passwords and API keys come from the environment at run time.
#
# Base images are pinned by tag; pin them by digest (IMAGE@sha256:...) for reproducible builds.
# The worker's CUDA base must not be newer than what the hosts' NVIDIA driver supports
# (CUDA 13 needs driver R580 or later); override CUDA_IMAGE and TORCH_CUDA_INDEX together.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.9.5
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu130

# --- api: build the virtual environment ------------------------------------------------------
FROM ${PYTHON_IMAGE} AS api-build
ARG TORCH_VERSION
ARG TORCH_CPU_INDEX
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from PyTorch's CPU index: `pip install .` alone would pull the multi-GB CUDA
# build from PyPI into an image that never sees a GPU.
RUN pip install --index-url "${TORCH_CPU_INDEX}" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md /src/
COPY archive /src/archive
COPY evaluator_worker /src/evaluator_worker
COPY evolution /src/evolution
COPY migrations /src/migrations
COPY services /src/services
RUN pip install /src && python -c "import torch; assert not torch.version.cuda, torch.__version__"

# --- worker: build the virtual environment on the CUDA base ----------------------------------
FROM ${UV_IMAGE} AS uv

FROM ${CUDA_IMAGE} AS worker-build
ARG TORCH_VERSION
ARG TORCH_CUDA_INDEX
COPY --from=uv /uv /usr/local/bin/uv
# A standalone CPython 3.11 (the distribution's is another version and lacks headers, which
# Triton needs to build its launcher) in /opt/python, copied whole into the final stage.
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN uv python install 3.11 && uv venv --seed --python 3.11 /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --index-url "${TORCH_CUDA_INDEX}" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md /src/
COPY archive /src/archive
COPY evaluator_worker /src/evaluator_worker
COPY evolution /src/evolution
COPY migrations /src/migrations
COPY services /src/services
RUN pip install "/src[cuda]" && python -c "import torch; assert torch.version.cuda, torch.__version__"

# --- the entry point, shared by both images --------------------------------------------------
FROM ${PYTHON_IMAGE} AS entrypoint
COPY --chmod=755 <<'EOF' /usr/local/bin/kernelmap-entrypoint
#!/bin/sh
# `docker compose run api kernelmap keys ...` and `docker compose run api keys ...` both work.
if [ "$1" = "kernelmap" ]; then shift; fi
exec kernelmap "$@"
EOF

# --- api: API + controller + migrations image (target `api`) --------------------------------
FROM ${PYTHON_IMAGE} AS api
RUN groupadd --system --gid 10001 kernelmap \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/kernelmap \
        --shell /usr/sbin/nologin kernelmap \
    && install -d -o kernelmap -g kernelmap -m 0750 /data
COPY --from=api-build /opt/venv /opt/venv
COPY --from=entrypoint /usr/local/bin/kernelmap-entrypoint /usr/local/bin/kernelmap-entrypoint
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    KERNELMAP_DATA_DIR=/data
USER 10001:10001
WORKDIR /home/kernelmap
EXPOSE 8000
# No HEALTHCHECK here: this image also runs the controller and the migrations, which serve no
# HTTP; docker-compose.yml probes GET /healthz on the api service only.
ENTRYPOINT ["kernelmap-entrypoint"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

# --- worker: GPU evaluation worker image (target `worker`) ----------------------------------
FROM ${CUDA_IMAGE} AS worker
# Triton compiles its kernel launcher with the system C compiler at first use. Versions are the
# base release's (pinning exact Ubuntu package versions breaks at every security update).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 kernelmap \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/kernelmap \
        --shell /usr/sbin/nologin kernelmap \
    && install -d -o kernelmap -g kernelmap -m 0750 /data
COPY --from=worker-build /opt/python /opt/python
COPY --from=worker-build /opt/venv /opt/venv
COPY --from=entrypoint /usr/local/bin/kernelmap-entrypoint /usr/local/bin/kernelmap-entrypoint
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    KERNELMAP_DATA_DIR=/data \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# The worker itself runs as root *inside its container*, with only the capabilities its sandbox
# needs (docker-compose.yml: cap_drop ALL, cap_add SYS_ADMIN, SETUID, SETGID, CHOWN, KILL,
# DAC_OVERRIDE, FOWNER): it gives every candidate, task and baseline process namespaces and a
# root of its own and then drops it to an unprivileged user id of its own (200000 and up), so
# no untrusted code ever runs as root or as the worker (docs/cluster.md, "Sandbox").
USER root
WORKDIR /home/kernelmap
ENTRYPOINT ["kernelmap-entrypoint"]
CMD ["worker", "--queue", "cuda"]
