# hostforge — the two commands are `make demo` and `make test`; see README.md.
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
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

.PHONY: toolchain
toolchain: ## Make sure rustfmt and clippy are installed.
	@$(CARGO) fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@$(CARGO) clippy --version >/dev/null 2>&1 || rustup component add clippy

.PHONY: testbed
testbed: ## Build kube-apiserver, kubectl, etcd, helm (Go module proxy) and install moto (PyPI), cached.
	@bash hack/build-k8s.sh
	@bash hack/moto.sh install

.PHONY: build
build: ## Build the operator.
	$(CARGO) build --locked

.PHONY: fmt-check
fmt-check: toolchain ## Fail when code is not rustfmt-formatted.
	$(CARGO) fmt --all -- --check

.PHONY: lint
lint: toolchain ## cargo clippy on every target, warnings are errors.
	$(CARGO) clippy --locked --all-targets --all-features -- -D warnings

.PHONY: test
test: fmt-check ## The whole suite: format, clippy, unit and integration tests.
	@# The Go/Python test bed builds in the background while Rust compiles:
	@# on a cold 2-core machine this overlaps two ~5-10 minute steps.
	@mkdir -p .cache
	@( bash hack/build-k8s.sh && bash hack/moto.sh install ) >.cache/testbed.log 2>&1 & \
	  bed=$$!; \
	  status=0; \
	  $(CARGO) clippy --locked --all-targets --all-features -- -D warnings && \
	  $(CARGO) test --locked --all-targets $(TEST_FEATURES) --no-run || status=$$?; \
	  if ! wait $$bed; then cat .cache/testbed.log; echo "make test: building the test bed failed" >&2; exit 1; fi; \
	  cat .cache/testbed.log; \
	  exit $$status
	$(CARGO) test --locked --all-targets $(TEST_FEATURES)
	$(CARGO) test --locked --doc $(TEST_FEATURES)

.PHONY: crds
crds: ## Regenerate crds/ from the Rust types.
	$(CARGO) run --locked --quiet -- crdgen --out-dir crds

.PHONY: demo
demo: testbed ## Start a local control plane + simulator, install CRDs, run the operator, apply examples/.
	$(CARGO) build --locked --quiet --bin hostforge
	HOSTFORGE_OPERATOR_BIN="$(or $(CARGO_TARGET_DIR),target)/debug/hostforge" \
	  $(CARGO) run --locked --quiet --example demo

.PHONY: clean-cache
clean-cache: ## Remove the per-user cache of built binaries and the moto venv.
	rm -rf "$(HOSTFORGE_CACHE)" .cache
