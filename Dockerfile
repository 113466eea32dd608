# mcp-metrics: built in the official Rust image, run in a slim Debian as a non-root user.
#   docker build -t mcp-metrics .
#   docker run -p 8890:8890 -p 9465:9465 -v metrics-data:/data mcp-metrics

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p mcp-metrics \
    && strip target/release/mcp-metrics

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home mcp \
    && mkdir -p /data \
    && chown mcp:mcp /data
COPY --from=build /src/target/release/mcp-metrics /usr/local/bin/mcp-metrics
COPY pipelines.yaml /etc/mcp-metrics/pipelines.yaml
ENV SQLITE_DB_PATH=/data/metrics.db
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001
EXPOSE 8890 9465
# Liveness, not readiness: a busy service (full queues) stays healthy; /ready is for load balancers.
# No curl in the image: the binary asks its own /health (on METRICS_SERVICE_PORT).
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 CMD ["mcp-metrics", "health"]
ENTRYPOINT ["mcp-metrics"]
CMD ["run", "--config", "/etc/mcp-metrics/pipelines.yaml"]
