# syntax=docker/dockerfile:1
#
# router-stream worker / CLI image.
#
#   docker build -t router-stream:local .
#   docker run --rm router-stream:local --help
#   docker run --rm -e ROUTER_KAFKA_BOOTSTRAP=kafka:9092 ... router-stream:local          # worker
#   docker run --rm ... router-stream:local db migrate                                     # any CLI command
#
# Two stages: the build stage has a compiler (in case a dependency has no wheel for this platform)
# and builds a virtualenv; the runtime stage copies only that virtualenv, so no compiler, pip cache
# or source tree ships in the image.

# A pinned patch release and Debian suite: a rebuild gets the same base unless this line changes.
ARG PYTHON_VERSION=3.11.13
ARG DEBIAN_SUITE=bookworm

# ------------------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_SUITE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# The dependency layer depends on pyproject.toml alone, so a code change reuses it.
COPY pyproject.toml ./
# hadolint ignore=DL3013
RUN pip install --upgrade pip setuptools wheel \
    && python -c "import tomllib; print('\\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

COPY README.md ./
COPY router_stream ./router_stream
# router_stream/_data links to these; the wheel carries their contents (package data).
COPY topics ./topics
COPY migrations ./migrations
COPY examples ./examples
RUN pip install --no-deps .

# ------------------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_SUITE} AS runtime

LABEL org.opencontainers.image.title="router-stream" \
      org.opencontainers.image.description="Kafka-native, stateful signal router" \
      org.opencontainers.image.licenses="Apache-2.0"

# tini is PID 1: it forwards SIGTERM to the worker (which then drains: finishes the batch in flight,
# flushes outputs, writes Postgres, commits offsets) and reaps any child processes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

# A fixed numeric uid/gid so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 router \
    && useradd --system --uid 10001 --gid router --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin router

COPY --from=build /opt/venv /opt/venv

WORKDIR /app
# ROUTER_HTTP_HOST: the settings default (127.0.0.1) is right on a laptop but unreachable for
# probes and Prometheus in a container, so the image listens on every interface.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ROUTER_HTTP_HOST=0.0.0.0 \
    ROUTER_HTTP_PORT=6066

RUN mkdir -p /etc/router-stream && router-stream --version

USER 10001:10001

EXPOSE 6066

# /livez answers while the process is alive and its event loop turns; it does not depend on Kafka
# or Postgres (that is /readyz), so a broker outage does not make Docker restart healthy workers.
# Any failure (refused, timeout, HTTP >= 400) raises, and python then exits 1 = unhealthy.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('ROUTER_HTTP_PORT', '6066'), timeout=4)"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "router-stream"]
CMD ["worker"]
