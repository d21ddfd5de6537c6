# pipewarden: build with cargo, run as a non-root user on slim Debian.
#   docker build -t pipewarden .
#   docker run -v /srv/pipewarden/config:/etc/pipewarden:ro -v pipewarden-data:/var/lib/pipewarden \
#              -e PIPEWARDEN_API_TOKEN=... -p 8080:8080 pipewarden

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
# The SQLite build flags (a memory-map ceiling above 2 GiB).
COPY .cargo ./.cargo
COPY src ./src
# sqlx::migrate! embeds the migrations at compile time.
COPY migrations ./migrations
RUN cargo build --release --locked --bin pipewarden

FROM debian:bookworm-slim
# ca-certificates for the CRM and Slack APIs over TLS; curl for the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/pipewarden --create-home pipewarden
COPY --from=build /src/target/release/pipewarden /usr/local/bin/pipewarden
COPY config/pipewarden.example.toml /etc/pipewarden/pipewarden.example.toml

# The SQLite store (the default sqlite://pipewarden.db) lives in the working directory.
WORKDIR /var/lib/pipewarden
VOLUME ["/var/lib/pipewarden"]
ENV PIPEWARDEN_CONFIG=/etc/pipewarden/pipewarden.toml \
    PIPEWARDEN__API__LISTEN=0.0.0.0:8080
EXPOSE 8080
USER pipewarden:pipewarden

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD curl --fail --silent --show-error http://127.0.0.1:8080/healthz || exit 1

ENTRYPOINT ["pipewarden"]
CMD ["run"]
