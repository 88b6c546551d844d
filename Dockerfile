# The sidecar image. Kafka and Redis are not in it: they are the cluster's.
# Build: docker build -t dualstream:dev .   (no Docker engine runs on the dev machines; see README)
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY clients ./clients
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 dualstream
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
# In a pod the sidecar listens where the app container can reach it; keep it off other networks
# with a NetworkPolicy, or use a unix socket on a shared emptyDir (DUALSTREAM_LISTEN=unix:/run/dualstream/sock).
ENV DUALSTREAM_LISTEN=0.0.0.0:50051 \
    DUALSTREAM_LOG_FORMAT=json
EXPOSE 50051
STOPSIGNAL SIGTERM
ENTRYPOINT ["dualstream", "serve"]
