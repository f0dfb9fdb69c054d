# Multi-stage: build a release binary, ship it on a small non-root runtime image.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# A workspace member (the generated Rust client): cargo reads its manifest.
COPY clients ./clients
RUN cargo build --release --locked --bin allot

# distroless/cc: glibc and nothing else; runs as the unprivileged "nonroot" user.
FROM gcr.io/distroless/cc-debian12:nonroot
WORKDIR /app
COPY --from=build /src/target/release/allot /usr/local/bin/allot
COPY config ./config
ENV ALLOT_ENV=production
EXPOSE 8080
USER nonroot
ENTRYPOINT ["/usr/local/bin/allot"]
CMD ["serve"]
