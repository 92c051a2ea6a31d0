# Builds a Custody image: a static binary on distroless, as a non-root user.
# BINARY selects which: manager (default) or gateway, e.g.
#   docker build --build-arg BINARY=gateway -t custody-gateway .
# Without a Docker engine, `make images` builds the same images as OCI
# layouts, reproducibly (hack/image); this file is for machines with one.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY api/ api/
COPY cmd/ cmd/
COPY config/ config/
COPY controllers/ controllers/
COPY internal/ internal/
COPY pkg/ pkg/
ARG TARGETOS=linux
ARG TARGETARCH=amd64
ARG BINARY=manager
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -ldflags="-s -w" -o /out/custody ./cmd/$BINARY

FROM gcr.io/distroless/static:nonroot
COPY --from=build /out/custody /custody
USER 65532:65532
ENTRYPOINT ["/custody"]
