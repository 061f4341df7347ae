# hostforge — the two commands are `make demo` and `make test` (`make check` is the
# quick loop); see README.md and docs/development.md.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

include hack/versions.env

# Built binaries and the simulator venv live in a per-user cache keyed by version,
# so a fresh clone on a machine that built them once starts in seconds.
export HOSTFORGE_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/hostforge
# CI builds from a fresh clone every time; it reuses one per-user target dir so the
# dependency graph is compiled once per machine, not once per run.
ifeq ($(CI),true)
export CARGO_TARGET_DIR ?= $(HOSTFORGE_CACHE)/ci-target
endif
CARGO ?= cargo
# Tests build the operator with named crash points (src/failpoint.rs), inert
# unless HOSTFORGE_FAILPOINTS names one; releases never have them.
TEST_FEATURES := --features failpoints

.PHONY: help
help: ## List the targets.
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

.PHONY: toolchain
toolchain: ## Make sure the pinned toolchain, rustfmt and clippy are installed.
	@bash hack/toolchain.sh
	@$(CARGO) fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@$(CARGO) clippy --version >/dev/null 2>&1 || rustup component add clippy

.PHONY: testbed
testbed: ## Build kube-apiserver, kubectl, etcd, helm (Go module proxy) and install moto (PyPI), cached.
	@bash hack/build-k8s.sh
	@bash hack/moto.sh install

.PHONY: build
build: toolchain ## Build the operator.
	$(CARGO) build --locked

.PHONY: fmt-check
fmt-check: toolchain ## Fail when code is not rustfmt-formatted.
	$(CARGO) fmt --all -- --check

.PHONY: lint
lint: toolchain ## cargo clippy on every target, warnings are errors.
	$(CARGO) clippy --locked --workspace --all-targets --all-features -- -D warnings

.PHONY: check
check: fmt-check lint ## The quick loop: format, clippy, unit tests (no test bed; < 2 min warm).
	$(CARGO) test --locked --lib --bins $(TEST_FEATURES)

.PHONY: doc
doc: ## API docs without dependencies; broken intra-doc links are errors.
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --locked --no-deps

.PHONY: test
test: fmt-check ## The whole suite: format, clippy, unit and integration tests.
	@# The Go/Python test bed builds in the background while Rust compiles:
	@# on a cold 2-core machine this overlaps two ~5-10 minute steps.
	@mkdir -p .cache
	@( bash hack/build-k8s.sh && bash hack/moto.sh install ) >.cache/testbed.log 2>&1 & \
	  bed=$$!; \
	  status=0; \
	  $(CARGO) clippy --locked --workspace --all-targets --all-features -- -D warnings && \
	  $(CARGO) test --locked --workspace --all-targets $(TEST_FEATURES) --no-run || status=$$?; \
	  if ! wait $$bed; then cat .cache/testbed.log; echo "make test: building the test bed failed" >&2; exit 1; fi; \
	  cat .cache/testbed.log; \
	  exit $$status
	$(CARGO) test --locked --workspace --all-targets $(TEST_FEATURES)
	$(CARGO) test --locked --workspace --doc $(TEST_FEATURES)

.PHONY: crds
crds: ## Regenerate crds/ from the Rust types.
	$(CARGO) run --locked --quiet -- crdgen --out-dir crds

.PHONY: demo
demo: toolchain testbed ## Start a local control plane + simulator, install CRDs, run the operator, apply examples/.
	$(CARGO) build --locked --quiet --bin hostforge
	HOSTFORGE_OPERATOR_BIN="$(or $(CARGO_TARGET_DIR),target)/debug/hostforge" \
	  $(CARGO) run --locked --quiet --example demo

.PHONY: bench
bench: toolchain testbed ## Release-build the operator and run the benchmarks (default scale 5: burst 100 x 10, HostFactory 100 x 10, steady 10,000 machines; HOSTFORGE_BENCH_SCALE=1: a quick run); writes target/bench/results.json.
	@start=$$(date +%s); $(CARGO) build --locked --release --bin hostforge; \
	  echo "release build of the operator: $$(( $$(date +%s) - start )) s"
	HOSTFORGE_OPERATOR_BIN="$(or $(CARGO_TARGET_DIR),target)/release/hostforge" \
	  $(CARGO) run --locked --quiet --example bench

.PHONY: clean-cache
clean-cache: ## Remove the per-user cache of built binaries and the moto venv.
	rm -rf "$(HOSTFORGE_CACHE)" .cache

# ---- Install on a cluster (docs/install.md) --------------------------------
HELM ?= $(if $(wildcard .cache/bin/helm),.cache/bin/helm,helm)
KUBECTL ?= $(if $(wildcard .cache/bin/kubectl),.cache/bin/kubectl,kubectl)
IMAGE ?= hostforge:$(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
RELEASE ?= hostforge
NAMESPACE ?= hostforge-system
CLUSTER_NAME ?= $(error set CLUSTER_NAME, the name tagged on every machine (hostforge.io/cluster))
# buildah, podman or docker, whichever is installed.
CONTAINER_TOOL ?= $(firstword $(foreach t,buildah podman docker,$(if $(shell command -v $(t)),$(t))))

.PHONY: chart-lint
chart-lint: ## helm lint + helm template of charts/hostforge (and its crds/ is crds/).
	@test "$$(readlink charts/hostforge/crds)" = "../../crds" || { echo "charts/hostforge/crds must be a link to ../../crds" >&2; exit 1; }
	$(HELM) lint --strict charts/hostforge --set config.clusterName=lint
	$(HELM) template hostforge charts/hostforge --set config.clusterName=lint >/dev/null
	$(HELM) template hostforge charts/hostforge --set config.clusterName=lint --set watchNamespace=team-a \
	  --set networkPolicy.enabled=true --set serviceMonitor.enabled=true --set grafanaDashboard.enabled=true >/dev/null

.PHONY: docker-build
docker-build: ## Build the container image $(IMAGE) from the Dockerfile (buildah, podman or docker).
	@test -n "$(CONTAINER_TOOL)" || { echo "docker-build: install buildah, podman or docker" >&2; exit 1; }
	$(if $(filter buildah,$(CONTAINER_TOOL)),buildah bud,$(CONTAINER_TOOL) build) -t $(IMAGE) -f Dockerfile .

.PHONY: install
install: ## Apply crds/ to the current kube context (server-side).
	$(KUBECTL) apply --server-side -f crds/

.PHONY: deploy
deploy: ## helm upgrade --install the chart into NAMESPACE (needs CLUSTER_NAME; IMAGE=repo:tag).
	$(HELM) upgrade --install $(RELEASE) charts/hostforge --namespace $(NAMESPACE) --create-namespace \
	  --set config.clusterName=$(CLUSTER_NAME) \
	  --set image.repository=$(firstword $(subst :, ,$(IMAGE))) --set image.tag=$(lastword $(subst :, ,$(IMAGE))) \
	  $(HELM_ARGS)

.PHONY: undeploy
undeploy: ## helm uninstall the release (CRDs and your MachineRequests stay).
	$(HELM) uninstall $(RELEASE) --namespace $(NAMESPACE)
