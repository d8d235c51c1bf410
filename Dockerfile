# syntax=docker/dockerfile:1
# The gateway's container image: `docker build -t secure-model-gateway .`
#
# - Two stages: the build stage installs the project with the pinned versions of
#   constraints.txt into a virtual environment; the runtime stage copies only that.
# - Runs as a numeric non-root user (10001), so `runAsNonRoot` can check it without
#   reading /etc/passwd.
# - Works with a read-only root filesystem: the only writable places are the data
#   directory (/var/lib/gateway, a volume) and /tmp (a tmpfs); HOME, caches and temporary
#   files point there, bytecode is compiled at build time and never written at run time.
# - The base image is pinned by tag, not by digest: the digest cannot be resolved where
#   this file was written (no registry access). Pin it where you build, e.g.
#   `--build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest>`; bookworm
#   (Debian 12) is the Debian release the test suite runs on.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/gateway
# The dependencies first, from pyproject.toml and the pins alone, so that a change of
# the code does not reinstall them. Every wheel is published for manylinux: no compiler.
COPY pyproject.toml constraints.txt README.md ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" > requirements.txt \
    && /opt/gateway/bin/pip install --no-cache-dir -c constraints.txt -r requirements.txt
COPY gateway ./gateway
COPY security ./security
COPY privacy ./privacy
COPY models ./models
COPY policies ./policies
COPY audit ./audit
# Then the project, with the same pins (nothing new to install). pip compiles the
# bytecode here, so nothing needs to write it at run time.
RUN /opt/gateway/bin/pip install --no-cache-dir -c constraints.txt .

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="secure-model-gateway" \
      org.opencontainers.image.description="Secure, compliance-focused gateway for ONNX ranking models" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin gateway \
    && mkdir -p /var/lib/gateway \
    && chown 10001:10001 /var/lib/gateway \
    && chmod 0700 /var/lib/gateway
COPY --from=build /opt/gateway /opt/gateway
COPY --chmod=0755 deploy/container/entrypoint.sh /usr/local/bin/gateway-entrypoint
COPY --chmod=0755 deploy/container/healthcheck.py /usr/local/bin/gateway-healthcheck
# Nothing may write outside the data directory and /tmp: onnxruntime's telemetry (a
# device id under HOME) is off, tldextract never fetches the public suffix list and
# caches under /tmp, and HOME is /tmp for any library that still insists.
ENV PATH="/opt/gateway/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    XDG_CONFIG_HOME=/tmp/.config \
    ORT_DISABLE_TELEMETRY=1 \
    TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS="" \
    TLDEXTRACT_CACHE=/tmp/.cache/tldextract \
    GATEWAY_DATA_DIR=/var/lib/gateway \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080
WORKDIR /var/lib/gateway
VOLUME ["/var/lib/gateway"]
USER 10001:10001
EXPOSE 8080
# Readiness, not liveness: a replica that cannot reach its audit store is taken out of
# the balancer (compose `depends_on: service_healthy`), not restarted.
HEALTHCHECK --interval=10s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "/usr/local/bin/gateway-healthcheck"]
ENTRYPOINT ["gateway-entrypoint"]
CMD ["serve"]
