# Custody — developer entry points. Tool versions are pinned in
# hack/tools/<tool>/go.mod and run with `go tool -modfile`, so nothing is
# downloaded but Go modules.

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

GO ?= go
CONTROLLER_GEN := $(GO) tool -modfile=hack/tools/controller-gen/go.mod controller-gen
GOLANGCI_LINT  := $(GO) tool -modfile=hack/tools/golangci-lint/go.mod golangci-lint
CRD_REF_DOCS   := $(GO) tool -modfile=hack/tools/crd-ref-docs/go.mod crd-ref-docs
HELM           := $(GO) tool -modfile=hack/tools/helm/go.mod helm

# The envtest binaries (kube-apiserver, etcd) live outside the clone;
# hack/envtest-assets.sh builds them once per version and prints the path.
ENVTEST_ASSETS = $(shell ./hack/envtest-assets.sh)
TEST_FLAGS ?= -race -timeout 30m

.PHONY: all
all: build

##@ Development

.PHONY: generate
generate: ## Generate deepcopy code.
	$(CONTROLLER_GEN) object paths=./api/...

.PHONY: manifests
manifests: ## Generate CRDs, the manager ClusterRole and the webhook configuration.
	$(CONTROLLER_GEN) crd paths=./api/... output:crd:artifacts:config=config/crd/bases
	$(CONTROLLER_GEN) rbac:roleName=custody-manager webhook paths=./controllers/... paths=./internal/... \
		output:rbac:artifacts:config=config/rbac output:webhook:artifacts:config=config/webhook
	./hack/sync-cert-manager-crds.sh
	$(GO) run ./hack/dashboard config/grafana/custody.json
	./hack/sync-chart.sh

.PHONY: docs
docs: ## Generate the API reference (docs/api.md).
	$(CRD_REF_DOCS) --source-path=./api --config=hack/crd-ref-docs.yaml --renderer=markdown --output-path=docs/api.md

.PHONY: fmt
fmt: ## Run gofmt.
	gofmt -w $$(git ls-files '*.go')

.PHONY: vet
vet: ## Run go vet.
	$(GO) vet ./...

.PHONY: lint
lint: ## Run golangci-lint.
	$(GOLANGCI_LINT) run ./...

.PHONY: envtest-assets
envtest-assets: ## Build kube-apiserver and etcd from pinned modules into the cache.
	@./hack/envtest-assets.sh

.PHONY: test
test: envtest-assets ## Run every test, with the race detector, against a real control plane.
	KUBEBUILDER_ASSETS="$(ENVTEST_ASSETS)" $(GO) test $(TEST_FLAGS) ./...

.PHONY: bench
bench: envtest-assets ## Run the benchmarks.
	KUBEBUILDER_ASSETS="$(ENVTEST_ASSETS)" $(GO) test -run '^$$' -bench . -benchmem ./...

FUZZ_EXECS ?= 20000

.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZ_EXECS executions (seed corpora run in make test).
	@for pkg in $$(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do \
		for t in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$pkg/*_test.go | cut -d' ' -f2); do \
			echo "fuzz $$pkg $$t"; $(GO) test $$pkg -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZ_EXECS)x >/dev/null || exit 1; \
		done; \
	done

.PHONY: load
load: ## Against a running `make dev`: write ceiling, ERP ingest, LOAD_CLAIMS claims of each kind, enrollment, renewal, heartbeats (docs/performance.md).
	./hack/load.sh $(or $(LOAD_CLAIMS),50) $(or $(LOAD_CONCURRENCY),8) .custody-dev

.PHONY: scale
scale: ## `make load` plus manager and gateway memory at 10k and 100k Devices and the resync after a restart (LOAD_SCALE), against `make dev DEV_FLAGS=--gateway-addr=none`.
	LOAD_PHASES=$(or $(LOAD_PHASES),ceiling,ingest,claims,enroll,renew,heartbeat,rss,resync) LOAD_SCALE=$(or $(LOAD_SCALE),10000,100000) \
		./hack/load.sh $(or $(LOAD_CLAIMS),200) $(or $(LOAD_CONCURRENCY),8) .custody-dev

.PHONY: verify
verify: ## Check that generated code, manifests and docs are current, then vet and lint.
	$(MAKE) generate manifests docs fmt
	./hack/verify-versions.sh
	./hack/check-sizes.sh
	@if [ -n "$$(git status --porcelain)" ]; then \
		echo "generated files are out of date; run 'make generate manifests docs fmt' and commit:"; \
		git status --porcelain; git --no-pager diff --stat; exit 1; fi
	$(MAKE) vet lint

##@ Build and run

VERSION ?= v0.1.0

.PHONY: images
images: ## Build the manager and gateway images as OCI layouts in bin/images, reproducibly, without a container engine (hack/image).
	SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct) $(GO) run ./hack/image --out bin/images --version $(VERSION) \
		--revision $$(git rev-parse HEAD)$$(git diff --quiet HEAD || echo -dirty) --platforms $(or $(PLATFORMS),linux/amd64,linux/arm64)

.PHONY: chart
chart: ## Lint the Helm chart and package it into bin/ (charts/custody; `go test ./charts` renders, compares and installs it).
	$(HELM) lint --strict charts/custody
	$(HELM) package charts/custody --destination bin

.PHONY: build
build: ## Build the binaries into bin/.
	$(GO) build -o bin/custody-manager ./cmd/manager
	$(GO) build -o bin/custody-gateway ./cmd/gateway
	$(GO) build -o bin/custody-device ./cmd/custody-device
	$(GO) build -o bin/custody-dev ./cmd/custody-dev
	$(GO) build -o bin/kubectl-custody ./cmd/kubectl-custody

.PHONY: kubectl-custody
kubectl-custody: ## Build the kubectl plugin into bin/ (put bin/ on PATH, then `kubectl custody --help`).
	$(GO) build -o bin/kubectl-custody ./cmd/kubectl-custody

.PHONY: krew
krew: ## Build the plugin's krew archives and dist/custody.yaml for VERSION (e.g. make krew VERSION=v0.1.0).
	GO=$(GO) VERSION=$(VERSION) ./hack/krew-release.sh

.PHONY: dev
dev: envtest-assets ## Run the whole control plane locally (see README).
	$(GO) build -o bin/custody-dev ./cmd/custody-dev
	KUBEBUILDER_ASSETS="$(ENVTEST_ASSETS)" ./bin/custody-dev $(DEV_FLAGS)

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*##/ { printf "  %-16s %s\n", $$1, $$2 } /^##@/ { printf "\n%s\n", substr($$0, 5) }' $(MAKEFILE_LIST)
