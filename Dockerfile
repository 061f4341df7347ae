# Container image of the operator: a static musl binary on an empty base,
# running as a non-root user (65532, "nonroot" in distroless terms). The
# runtime stage pulls nothing; only the build stage needs the Rust image.
#
#   make docker-build                     # buildah, podman or docker
#   buildah bud -t hostforge:0.1.0 .      # the same by hand
#
# Where no registry is reachable (air-gapped builders), build the binary on the
# host and package it with the `prebuilt` target, which pulls nothing at all:
#
#   cargo build --locked --release --target x86_64-unknown-linux-musl --bin hostforge
#   mkdir -p target/image && cp target/x86_64-unknown-linux-musl/release/hostforge target/image/ \
#     && cp /etc/ssl/certs/ca-certificates.crt target/image/
#   buildah bud --target prebuilt -t hostforge:0.1.0 .

FROM docker.io/library/rust:1.95-bookworm AS build
# musl-tools: aws-lc-rs compiles C with musl-gcc; cmake: aws-lc's build.
RUN rustup target add x86_64-unknown-linux-musl && \
    apt-get update && apt-get install -y --no-install-recommends musl-tools cmake && \
    rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Manifests first: the dependency graph is cached in its own layer as long as
# Cargo.toml/Cargo.lock do not change.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo.toml names examples in hack/ and tests in tests/; they must exist to
# parse the manifest, they are not built.
COPY hack ./hack
COPY tests ./tests
RUN cargo build --locked --release --target x86_64-unknown-linux-musl --bin hostforge && \
    mkdir -p /out && cp target/x86_64-unknown-linux-musl/release/hostforge /out/hostforge

FROM scratch AS prebuilt
# Root CAs for the AWS endpoints (the apiserver's CA comes with the
# ServiceAccount mount).
COPY target/image/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY target/image/hostforge /hostforge
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/hostforge"]
CMD ["run"]

# The default target (last stage): the binary from the build stage.
FROM scratch AS runtime
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/hostforge /hostforge
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/hostforge"]
CMD ["run"]
