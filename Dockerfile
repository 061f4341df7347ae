# Multi-stage build of the operator: a static musl binary on an empty base,
# running as a non-root user. The runtime stage pulls nothing.
FROM docker.io/library/rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl && \
    apt-get update && apt-get install -y --no-install-recommends musl-tools cmake && \
    rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY hack ./hack
COPY tests ./tests
RUN cargo build --locked --release --target x86_64-unknown-linux-musl --bin hostforge && \
    mkdir -p /out && cp target/x86_64-unknown-linux-musl/release/hostforge /out/hostforge

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/hostforge /hostforge
USER 65532:65532
ENTRYPOINT ["/hostforge"]
CMD ["run"]
