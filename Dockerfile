# syntax=docker/dockerfile:1
# One image for the mlflow, trainer and api services of docker-compose.yml.
#   docker build -t ecg-service .
#   docker run --rm -p 8000:8000 -e MLFLOW_TRACKING_URI=http://host:5000 ecg-service
ARG PYTHON_VERSION=3.11

# ---------------------------------------------------------------- builder: a venv with everything
FROM python:${PYTHON_VERSION}-slim AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, pinned, from the CPU index: an unpinned torch from PyPI is a CUDA build of several GB.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
WORKDIR /src
# Dependencies in their own layer: it is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
RUN mkdir -p models pipeline service \
 && touch models/__init__.py pipeline/__init__.py service/__init__.py \
 && pip install . \
 && pip uninstall -y ecg-service
COPY models ./models
COPY pipeline ./pipeline
COPY service ./service
# Not editable: the runtime stage gets the package inside the venv, with its bytecode compiled.
RUN pip install --no-deps .

# ---------------------------------------------------------------- runtime: slim, unprivileged
FROM python:${PYTHON_VERSION}-slim AS runtime
LABEL org.opencontainers.image.title="ecg-service" \
      org.opencontainers.image.description="ECG arrhythmia and heart-disease prediction: pipeline, MLflow, FastAPI"
RUN groupadd --system --gid 10001 ecg \
 && useradd --system --uid 10001 --gid ecg --home-dir /app --shell /usr/sbin/nologin ecg \
 && mkdir -p /app /data /mlartifacts \
 && chown ecg:ecg /app /data /mlartifacts
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ECG_DATA_DIR=/data \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /app
# /data (datasets) and /mlartifacts (models) are named volumes in docker-compose.yml; a new named
# volume takes the ownership set above, so the unprivileged user can write to it. Health checks
# are per service in docker-compose.yml (the same image also runs mlflow and the one-shot trainer).
USER 10001:10001
EXPOSE 8000 5000
CMD ["ecg", "serve", "--host", "0.0.0.0", "--port", "8000"]
