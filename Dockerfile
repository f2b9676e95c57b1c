# diffusion-queue image: the API (default CMD) and the workers (`dq worker ...`).
#
# CPU build (default; the API and the tiny/CPU worker):
#   docker build -t diffusion-queue:cpu .
#
# Neuron build (inf2 workers). The base MUST be an AWS Neuron Deep Learning Container
# (or an image built on a Neuron DLAMI) that already carries torch, torch-neuronx,
# neuronx-cc and the Neuron runtime libraries; the Neuron *driver* stays on the host.
# Pick a DLC with Python 3.10/3.11 (pyproject: requires-python <3.12):
#   docker build -t diffusion-queue:neuron \
#     --build-arg BASE_IMAGE=public.ecr.aws/neuron/pytorch-inference-neuronx:2.8.0-neuronx-py311-sdk2.26.1-ubuntu22.04 \
#     --build-arg EXTRAS=neuron \
#     --build-arg TORCH_SPEC= \
#     --build-arg EXTRA_INDEX_URL=https://pip.repos.neuron.amazonaws.com .
#
# Only classic-builder features are used, so docker-compose 1.29 (no BuildKit) builds it.

ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# Which optional dependency group of pyproject.toml to install: cpu | neuron
ARG EXTRAS=cpu
# torch is installed first, from its own index, so that pip never pulls the CUDA wheels.
# Empty for the Neuron build: the DLC's torch (matched to torch-neuronx) must be kept.
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Extra pip index; the Neuron build sets https://pip.repos.neuron.amazonaws.com
ARG EXTRA_INDEX_URL=

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DQ_MODELS_DIR=/models

WORKDIR /app

# 1. torch (large, rarely changes: its own layer).
RUN if [ -n "${TORCH_SPEC}" ]; then \
        python3 -m pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"; \
    else \
        echo "TORCH_SPEC empty: keeping the base image's torch"; \
    fi

# 2. The project's dependencies, resolved from pyproject.toml alone (empty package stubs),
#    so that editing the code does not reinstall diffusers/transformers/celery.
COPY pyproject.toml README.md ./
RUN set -eu; \
    for pkg in jobs api worker dq webhooks; do mkdir -p "$pkg" && touch "$pkg/__init__.py"; done; \
    extra_index=""; \
    if [ -n "${EXTRA_INDEX_URL}" ]; then extra_index="--extra-index-url ${EXTRA_INDEX_URL}"; fi; \
    python3 -m pip install ${extra_index} ".[${EXTRAS}]"; \
    rm -rf jobs api worker dq webhooks build ./*.egg-info

# 3. The code itself (no dependency resolution: step 2 did it).
COPY jobs/ jobs/
COPY api/ api/
COPY worker/ worker/
COPY dq/ dq/
COPY webhooks/ webhooks/
RUN python3 -m pip install --no-deps --force-reinstall . \
    && rm -rf build ./*.egg-info \
    && dq --help >/dev/null

# Unprivileged runtime user. Compiled models are mounted read-only at /models.
# (On inf2 hosts the Neuron driver's udev rule makes /dev/neuron* world read/write;
#  if yours does not, run the Neuron worker with `user: root` or a matching group_add.)
RUN useradd --create-home --uid 10001 --user-group dq \
    && mkdir -p /models
USER dq

EXPOSE 8000

# No entrypoint (this also clears the one a Neuron DLC base image sets): the command is
# the whole command line. Default: the API; workers override it with `dq worker ...`,
# webhook delivery with `dq webhooks`.
ENTRYPOINT []
CMD ["gunicorn", "-c", "api/gunicorn_conf.py", "--bind", "0.0.0.0:8000", "--workers", "4", "api:create_app()"]
