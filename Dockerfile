# syntax=docker/dockerfile:1
# One image for every role; the role is the command (the Procfile's lines):
#   docker build -t dashpipe:local .
#   docker run --rm -e DASHPIPE_KAFKA_BOOTSTRAP_SERVERS=... -e DASHPIPE_DATABASE_URL=... \
#     -p 8080:8080 dashpipe:local dashpipe run web
# tests/image_steps.py replays the `build` stage's COPY and RUN steps in a temporary folder
# (CI has no Docker engine) and checks the final stage's CMD and HEALTHCHECK against the
# result: keep COPY destinations relative to WORKDIR and paths in RUN under $VIRTUAL_ENV.

FROM python:3.11-slim AS build
ENV VIRTUAL_ENV=/opt/dashpipe PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY dashpipe dashpipe
COPY streams streams
COPY agents agents
# every dependency has a wheel for CPython 3.11 on manylinux: no compiler in either stage;
# the package without its dev extras
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv "$VIRTUAL_ENV" && "$VIRTUAL_ENV/bin/pip" install .

FROM python:3.11-slim
# a fixed uid, so volumes and Kubernetes' runAsNonRoot agree with the image
RUN groupadd --system --gid 10001 dashpipe \
    && useradd --system --uid 10001 --gid dashpipe --create-home --home-dir /home/dashpipe dashpipe \
    && install -d -o dashpipe -g dashpipe /var/lib/dashpipe
COPY --from=build /opt/dashpipe /opt/dashpipe
ENV PATH=/opt/dashpipe/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DASHPIPE_WEB_HOST=0.0.0.0 \
    DASHPIPE_STATE_DIR=/var/lib/dashpipe
USER dashpipe
WORKDIR /home/dashpipe
# 8080: the web role (API, webhooks, /readyz, /metrics); 9101-9104: /readyz and /metrics of
# poll, map, persist and deliver (DASHPIPE_WEB_METRICS_PORT, as in the Procfile)
EXPOSE 8080 9101 9102 9103 9104
HEALTHCHECK --interval=10s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-m", "dashpipe.healthcheck"]
CMD ["dashpipe", "run", "web"]
