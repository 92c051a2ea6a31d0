# Builds the custody-manager image: a static binary on distroless, as a
# non-root user. (Our development machines have no Docker engine; CI builds
# this where one exists.)
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY api/ api/
COPY cmd/ cmd/
COPY config/ config/
COPY controllers/ controllers/
COPY internal/ internal/
ARG TARGETOS=linux
ARG TARGETARCH=amd64
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -ldflags="-s -w" -o /out/custody-manager ./cmd/manager

FROM gcr.io/distroless/static:nonroot
COPY --from=build /out/custody-manager /custody-manager
USER 65532:65532
ENTRYPOINT ["/custody-manager"]
