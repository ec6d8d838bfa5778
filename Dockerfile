# agent-supervisor container image.
#
#   docker build -t agent-supervisor .
#   docker run --init --stop-timeout 90 -v /srv/dice-bot/etc:/etc/agent-supervisor:ro \
#       -v dice-bot-state:/var/lib/agent-supervisor -p 127.0.0.1:9464:9464 agent-supervisor
#
# The config is mounted, never baked in, readable by uid 10001; in a container it should set
# [metrics] listen = "0.0.0.0:9464" for the published port to reach the endpoint. With no
# [redis] url the daemon runs the embedded redis-server (installed below) in its state
# volume. The agents it supervises must be in the image too: build FROM this one and add them.
# Linted with hadolint (`.venv/bin/hadolint Dockerfile`, run by .ci/checks-ops.sh).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: a venv at the same path as at run time, from the source tree --------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Every dependency (hiredis, uvloop, orjson, pydantic-core) ships manylinux wheels for
# CPython 3.11: no compiler is needed, not even here.
RUN python -m venv /opt/agent-supervisor
COPY pyproject.toml README.md ./
COPY supervisor ./supervisor
RUN /opt/agent-supervisor/bin/pip install --no-cache-dir . \
    && /opt/agent-supervisor/bin/python -m compileall -q /opt/agent-supervisor/lib

# --- runtime -------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="agent-supervisor" \
      org.opencontainers.image.description="Blue/green supervisor for AI agents that hold money"

# redis-server for the embedded default. Not pinned to a version on purpose: bookworm's
# security updates replace the exact version, and a pin would break the build on every one.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/*

# A fixed system user (not root), with a numeric id so that volumes and runAsNonRoot can
# rely on it; the control socket directory and the state belong to it.
ARG AGENTSUP_UID=10001
RUN groupadd --system --gid "${AGENTSUP_UID}" agentsup \
    && useradd --system --uid "${AGENTSUP_UID}" --gid agentsup --no-create-home \
        --home-dir /var/lib/agent-supervisor --shell /usr/sbin/nologin agentsup \
    && install -d -o agentsup -g agentsup -m 0700 /var/lib/agent-supervisor \
    && install -d -o agentsup -g agentsup -m 0750 /run/agent-supervisor \
    && install -d -o root -g agentsup -m 0750 /etc/agent-supervisor

COPY --from=builder /opt/agent-supervisor /opt/agent-supervisor

ENV PATH=/opt/agent-supervisor/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

USER ${AGENTSUP_UID}:${AGENTSUP_UID}
WORKDIR /var/lib/agent-supervisor
VOLUME ["/etc/agent-supervisor", "/var/lib/agent-supervisor"]
EXPOSE 9464

# SIGTERM: the daemon quiesces the agents, snapshots, stops each child within its
# stop_timeout_s and exits 0. Give it the time: `docker run --stop-timeout 90` (the default,
# 10 s, is shorter than one child's default stop timeout).
STOPSIGNAL SIGTERM
# Healthy while the daemon answers on its control socket (exit 0); 69 when unreachable.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/opt/agent-supervisor/bin/agentsup", "status", "--json", "-c", "/etc/agent-supervisor/config.toml"]

ENTRYPOINT ["agentsup"]
CMD ["run", "-c", "/etc/agent-supervisor/config.toml"]
