# The dualstream sidecar image. Kafka and Redis are not in it: they are the cluster's.
#
#   docker build -t dualstream .                      (or: buildah bud -t dualstream .)
#   docker run --read-only -e DUALSTREAM_KAFKA_BOOTSTRAP=... -e DUALSTREAM_REDIS_URL=... dualstream
#
# BASE is any Debian-like image with Python 3.11 as `python3` and its venv module; both stages
# use it, so the virtualenv built in the first runs unchanged in the second. CI builds on a
# small Debian bookworm base made by mmdebstrap (scripts/image-build.sh).
ARG BASE=python:3.11-slim

FROM ${BASE} AS dependencies
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# The dependencies first, from pyproject.toml alone, so that this layer is reused until they
# change. The virtualenv keeps no pip: the image installs nothing at run time.
COPY pyproject.toml ./
RUN python3 -m venv /opt/dualstream \
    && /opt/dualstream/bin/python -c 'import subprocess, sys, tomllib; \
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; \
subprocess.run([sys.executable, "-m", "pip", "install", "--no-compile", *deps], check=True)'

FROM dependencies AS build
COPY README.md ./
COPY server ./server
COPY clients/python ./clients/python
# Bytecode is compiled here, once: at run time the root filesystem is read-only and Python must
# not try to write (unchecked-hash: the .pyc stay valid whatever times the layers give the
# sources). The user is a passwd entry the final stage copies, so it needs no useradd.
RUN /opt/dualstream/bin/python -m pip install --no-compile --no-deps . \
    && /opt/dualstream/bin/python -m pip uninstall --yes pip setuptools \
    && python3 -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/dualstream \
    && echo "dualstream:x:10001:10001:dualstream sidecar:/nonexistent:/usr/sbin/nologin" >> /etc/passwd \
    && echo "dualstream:x:10001:" >> /etc/group \
    && mkdir -p /rootfs/run/dualstream

FROM ${BASE}
COPY --from=build /etc/passwd /etc/group /etc/
# Where the unix-socket variant puts its socket (an emptyDir in Kubernetes).
COPY --from=build --chown=10001:10001 /rootfs/run/dualstream /run/dualstream
COPY --from=build /opt/dualstream /opt/dualstream
# The API stays on loopback: containers of a pod share it, nothing else reaches it. The admin
# listener (/healthz, /readyz, /metrics) is on every interface, because the kubelet probes the
# pod IP and Prometheus scrapes it.
ENV PATH=/opt/dualstream/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DUALSTREAM_LISTEN=127.0.0.1:50051 \
    DUALSTREAM_ADMIN_LISTEN=0.0.0.0:9464 \
    DUALSTREAM_LOG_FORMAT=json
USER 10001:10001
WORKDIR /
EXPOSE 9464
# SIGTERM drains: NOT_SERVING at once, streams end, in-flight calls get shutdown_grace, the
# producer is flushed, exit 0.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=8s --start-period=30s --retries=3 \
    CMD ["dualstream", "health", "--timeout", "3"]
ENTRYPOINT ["dualstream", "serve"]
