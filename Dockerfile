# Serving image: CPU torch by default, weights baked in, non-root.
#   docker build -t digits-serving:latest .
#   CUDA build:  --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124
#   Offline:     --build-arg TORCH_WHEELS=path/in/context/with/torch-*.whl
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_WHEELS=deploy/docker/no-wheels
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
RUN python -m venv /opt/venv
COPY ${TORCH_WHEELS} /wheels/
# A local wheel wins; otherwise torch comes from the chosen index (CPU by default).
RUN set -e; \
    wheel="$(find /wheels -name 'torch-*.whl' | head -n 1)"; \
    if [ -n "$wheel" ]; then /opt/venv/bin/pip install "$wheel"; \
    else /opt/venv/bin/pip install --index-url "$TORCH_INDEX_URL" torch; fi
COPY pyproject.toml README.md ./
COPY core/ core/
COPY models/ models/
COPY service/ service/
COPY weights/ weights/
# The wheel carries the committed weights (package data of `weights`).
RUN /opt/venv/bin/pip install .

FROM ${PYTHON_IMAGE}
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8000
WORKDIR /app
USER 10001
# HTTP, and the Open Inference Protocol over gRPC (DIGITS_GRPC_PORT)
EXPOSE 8000 8001
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
ENTRYPOINT ["python", "-m", "service"]
