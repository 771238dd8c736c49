# syntax=docker/dockerfile:1
# One image for every auditq process: `api` (default), `worker`, `migrate`.
#   docker build -t auditq .
#   docker run --rm -e AUDITQ_DATABASE_URL=… -e AUDITQ_REDIS_URL=… auditq migrate
# deploy/compose.yaml and deploy/kubernetes/ run it; docs/operations.md walks through both.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# --- builder: a virtual environment with the dependencies of pyproject.toml -------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /app

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# A C compiler and OpenSSL's headers, for this stage only: `auditq verify` writes rows' leaves
# in C (service/store/_copyleaf.c, built by the editable install below; the runtime stage
# takes the built module with /app and needs only OpenSSL's library, which the base image
# has). Versions are not pinned: they are the base image's Debian release's.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*

# Dependencies in their own layer: it is rebuilt only when pyproject.toml changes. Every one of
# them ships a manylinux wheel for CPython 3.12. The image runs the server: the producer's
# dependencies and the `server` extra's (`.[server]`).
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; deps = p['dependencies'] + p['optional-dependencies']['server']; open('/tmp/requirements.txt', 'w').write('\n'.join(deps) + '\n')" \
 && pip install --no-cache-dir --requirement /tmp/requirements.txt

# The source stays at /app and the project is installed in editable mode: service/db.py reads
# schema.sql from the directory above the `service` package, so the package must not be copied
# into site-packages without it.
COPY schema.sql ./
COPY auditq ./auditq
COPY service ./service
COPY workers ./workers
RUN pip install --no-cache-dir --no-deps --editable . \
 && python -m compileall -q /app/auditq /app/service /app/workers \
 && python -c "from service.store import copyleaf; assert copyleaf.available()" \
 && auditq --help > /dev/null

# --- runtime: no compiler, no build tools, not root -------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# The uid is numeric so that Kubernetes' runAsNonRoot can check it.
# /var/lib/auditq-seal-state: where deploy/ mounts the sealer's state volume (a new named
# volume takes this directory's owner).
RUN groupadd --system --gid 10001 auditq \
 && useradd --system --uid 10001 --gid auditq --home-dir /var/lib/auditq --create-home \
        --shell /usr/sbin/nologin auditq \
 && install -d -o auditq -g auditq -m 0700 /var/lib/auditq-seal-state

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app

# AUDITQ_DATA_DIR only matters to `auditq run` (embedded servers, a demo); the production
# commands take AUDITQ_REDIS_URL and AUDITQ_DATABASE_URL.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AUDITQ_DATA_DIR=/var/lib/auditq \
    AUDITQ_HTTP_HOST=0.0.0.0 \
    AUDITQ_HTTP_PORT=8080 \
    AUDITQ_LOG_FORMAT=json

WORKDIR /app
USER 10001:10001
EXPOSE 8080

# Liveness of the API (slim has no curl). Worker and migrate containers disable it
# (deploy/compose.yaml); Kubernetes ignores it and uses the probes of deploy/kubernetes/.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('AUDITQ_HTTP_PORT', '8080') + '/healthz', timeout=4)"]

# The CLI handles SIGTERM itself: the API drains, a worker finishes its jobs in hand (≤ 20 s).
ENTRYPOINT ["auditq"]
CMD ["api"]
