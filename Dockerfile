# syntax=docker/dockerfile:1
#
# pixelserve images.
#
#   docker build -t pixelserve:gpu .                        serving, GPU-capable (default target):
#                                                           onnxruntime-gpu + CUDA 13 / cuDNN 9 wheels
#   docker build --build-arg ORT_EXTRAS= -t pixelserve .    serving, CPU only: onnxruntime-gpu falls back to the CPU
#   docker build --build-arg ORT_PACKAGE=onnxruntime --build-arg ORT_EXTRAS= -t pixelserve:cpu .
#                                                           serving, smallest: the CPU-only ONNX Runtime build
#   docker build --target train -t pixelserve-train .       training (torch CPU build): python -m training ...
#
# Serving images hold the service, ONNX Runtime and the shipped models in /models; no torch.
# Every stage installs from the hashed lock files in locks/ (make lock; docs/development.md).

FROM python:3.11-slim AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# The same unprivileged uid in every image, so that serving and training share the models volume.
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin pixelserve

# ---------------------------------------------------------------- serving: dependencies + package
FROM python-base AS serve-builder
ARG ORT_PACKAGE=onnxruntime-gpu
ARG ORT_EXTRAS=cuda,cudnn
RUN python -m venv /opt/venv
WORKDIR /src
COPY locks/serve.txt locks/serve-gpu.txt locks/serve-cpu.txt locks/
# Dependencies in a layer of their own, from the hashed lock of the chosen ONNX Runtime (make lock writes
# them): changing the source does not reinstall them.
RUN case "$ORT_PACKAGE[$ORT_EXTRAS]" in \
        "onnxruntime-gpu[cuda,cudnn]") lock=serve-gpu ;; \
        "onnxruntime-gpu[]") lock=serve ;; \
        "onnxruntime[]") lock=serve-cpu ;; \
        *) echo "no lock file for ORT_PACKAGE=$ORT_PACKAGE ORT_EXTRAS=$ORT_EXTRAS (see locks/)" >&2; exit 1 ;; \
    esac \
 && pip install --require-hashes --no-deps -r "locks/$lock.txt"
COPY pyproject.toml README.md ./
COPY service service
# pip and setuptools are build tools: the serving image has no use for them.
RUN pip install --no-deps . \
 && pip uninstall -y pip setuptools

# ---------------------------------------------------------------- training: torch CPU build
FROM python-base AS train-builder
# The CPU-only torch wheels; an empty value uses pip's configured index instead.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python -m venv /opt/venv
WORKDIR /src
COPY locks/train.txt locks/torch-cpu.txt locks/
# torch's dependencies hashed in train.txt; torch itself pinned by version, from PyTorch's CPU index
# (its wheel's hash depends on where it comes from: scripts/lock.sh).
RUN pip install --require-hashes --no-deps -r locks/train.txt \
 && pip install --no-deps ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} -r locks/torch-cpu.txt

FROM python-base AS train
COPY --from=train-builder /opt/venv /opt/venv
# Laid out like a checkout, so the CLI's defaults apply: it publishes into /app/models, reads the
# vendored MNIST test split from /app/datasets and downloads into /app/data (compose mounts its volumes there).
WORKDIR /app
COPY training training
COPY datasets/mnist datasets/mnist
# The shipped repository too: whichever image first mounts an empty models volume fills it.
COPY --chown=pixelserve:pixelserve models models
RUN mkdir data && chown pixelserve:pixelserve data
ENV HOME=/tmp MPLCONFIGDIR=/tmp/matplotlib
USER pixelserve:pixelserve
ENTRYPOINT ["python", "-m", "training"]
CMD ["--help"]

# ---------------------------------------------------------------- serving image (default target)
FROM python-base AS serve
COPY --from=serve-builder /opt/venv /opt/venv
# Owned by the service user so that a training container (same uid) can add versions to the volume.
COPY --chown=pixelserve:pixelserve models /models
# HOME=/tmp: ONNX Runtime keeps a small cache file under $HOME; /tmp stays writable when the root
# filesystem is mounted read-only (compose and Kubernetes give it a tmpfs / emptyDir).
ENV PIXELSERVE_MODEL_REPOSITORY=/models \
    PIXELSERVE_HOST=0.0.0.0 \
    PIXELSERVE_PORT=8000 \
    HOME=/tmp
WORKDIR /app
USER pixelserve:pixelserve
EXPOSE 8000
STOPSIGNAL SIGTERM
# python, not curl: the slim image has no curl. urlopen raises (exit 1) on any status but 2xx.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('PIXELSERVE_PORT', '8000'), timeout=4)"]
CMD ["python", "-m", "service"]
