# dualstream: `make demo` to see it work, `make test` for the whole suite.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
STACK := $(PY) -m stack.localstack

.PHONY: help install system-deps kafka-jars proto proto-check buf-check lint typecheck unit test test-clients test-go test-ts test-java faults bench bench-smoke up down status demo clean deploy-tools image deploy-check

help:
	@echo "make demo       install everything, start Kafka + Redis + the sidecar, show events flowing"
	@echo "make test       lint, type checks, proto drift check and the whole test suite"
	@echo "make up / down  start / stop the local stack (Kafka :9092, Redis :6379, Jaeger :4317/:16686,"
	@echo "                sidecar :50051)"
	@echo "make status     what of the local stack is running"
	@echo "make bench      the benchmark: writes bench/results/<date>.{json,md,png}"
	@echo "make faults     the fault-injection suite; rewrites docs/reliability.md"
	@echo "make proto      regenerate every language's code from protos/ (Go, TypeScript, Java, Python)"
	@echo "make image      build the container image without Docker (mmdebstrap base + buildah)"
	@echo "make deploy-check  hadolint, the image built and run, k8s/ rendered and validated"

install: system-deps $(VENV)/.installed kafka-jars jaeger-background

system-deps:
	@bash scripts/install-system-deps.sh

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || { echo "creating the virtualenv in $(VENV)"; python3 -m venv $(VENV); }
	@echo "installing dualstream and its development tools into $(VENV)"
	@$(PY) -m pip install -q --disable-pip-version-check -U pip
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

kafka-jars: $(VENV)/.installed
	@$(STACK) fetch

# Built from source with Go, once, into ${DUALSTREAM_CACHE:-~/.cache/dualstream}/jaeger-<version>.
# `install` only starts the build, in the background: on a fresh machine it is the longest step,
# and the tests that need Jaeger (they run last) and `make up` wait for it.
.PHONY: jaeger jaeger-background
jaeger: $(VENV)/.installed
	@$(PY) -m stack.jaeger build
jaeger-background: $(VENV)/.installed
	@$(PY) -m stack.jaeger build --background

proto: $(VENV)/.installed
	@bash scripts/gen-protos.sh

# Regenerates, then fails if any language's committed generated code differs.
proto-check: $(VENV)/.installed
	@bash scripts/gen-protos.sh --check

# buf lint (STANDARD) and buf breaking (FILE) against the previous commit of main.
buf-check:
	@bash scripts/buf-check.sh

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint Dockerfile

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

unit: $(VENV)/.installed
	$(VENV)/bin/pytest -q tests/test_events.py tests/test_settings.py

test: install deploy-tools proto-check buf-check lint typecheck
	$(VENV)/bin/pytest -q -ra
	@$(MAKE) --no-print-directory test-clients

# The clients' native test runners against a throwaway stack on free ports (`with-stack`, see
# clients/README.md). Inside one (DUALSTREAM_TEST_TARGET set) a target uses it rather than
# starting its own, so `make test-clients` runs every language under a single stack.
WITH_STACK = $(if $(DUALSTREAM_TEST_TARGET),,$(STACK) with-stack --)
CLIENT_TESTS := test-go test-ts test-java

test-clients: install
	$(STACK) with-stack -- $(MAKE) --no-print-directory -k $(CLIENT_TESTS)

test-go: $(VENV)/.installed
	$(WITH_STACK) bash -c 'cd clients/go && go vet ./... && go test -count=1 ./...'

# TypeScript: tsc (strict) builds the package and the tests, then node's own runner.
test-ts: $(VENV)/.installed
	@bash clients/ts/scripts/npm-ci.sh
	$(WITH_STACK) bash -c 'cd clients/ts && npm run --silent build && npm run --silent build:test && node --test build/test/unit/*.test.js build/test/integration/*.test.js'

# Java: google-java-format's check, then Maven builds, runs Surefire (unit tests, then
# integration tests on the stack) and installs the artifact into the local Maven repository.
# Not quiet: Surefire's summary is Maven's INFO output.
test-java: $(VENV)/.installed
	@bash clients/java/scripts/format.sh --check
	$(WITH_STACK) mvn -B -ntp -f clients/java/pom.xml install

# What the image and manifest checks need: mmdebstrap, buildah, podman and runc from apt;
# kustomize and kubeconform built from pinned Go modules into the cache; the image itself (the
# test rebuilds it only if the sources changed since). The Go build and the image build run
# side by side: on a fresh machine both mostly wait on downloads.
deploy-tools:
	@bash scripts/install-image-tools.sh
	@bash scripts/k8s-tools.sh >/dev/null & tools=$$!; \
		bash scripts/image.sh build; built=$$?; \
		wait $$tools && exit $$built

# The image, built as CI builds it (README, "Run it in Kubernetes"); TAG=... to name it.
image:
	@bash scripts/image.sh build $(TAG)

# hadolint, the image built and run against a real Kafka and Redis, k8s/ validated.
deploy-check: install deploy-tools
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/pytest -q -ra tests/test_image.py tests/test_k8s.py

bench: install
	$(PY) -m bench.run

bench-smoke: install
	$(PY) -m bench.run --smoke

faults: install
	$(VENV)/bin/pytest -q -ra -m faults -s
	@$(PY) scripts/reliability_report.py

up: install jaeger
	@$(STACK) up

down:
	@if [ -x $(PY) ]; then $(STACK) down; else echo "nothing to stop: no virtualenv"; fi

status:
	@$(STACK) status

demo: up
	@bash scripts/demo.sh

clean: down
	rm -rf .stack build *.egg-info .pytest_cache .mypy_cache .ruff_cache
