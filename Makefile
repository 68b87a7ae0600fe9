# dify-shaper developer entry points. `make run` and `make test` install what pingora's build
# needs (cmake, a C compiler) when it is missing, then call cargo.

CARGO ?= cargo
ARGS ?=

.PHONY: deps run test test-docker soak lint check-modules fmt bench check-config clean

# pingora builds C code (zstd, brotli, libz-ng through cmake): install the tools when absent.
deps:
	@missing=""; \
	command -v cmake >/dev/null 2>&1 || missing="$$missing cmake"; \
	command -v cc >/dev/null 2>&1 || missing="$$missing gcc g++"; \
	command -v make >/dev/null 2>&1 || missing="$$missing make"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@command -v $(CARGO) >/dev/null 2>&1 || { echo "cargo not found: install Rust from https://rustup.rs"; exit 1; }

# Run the proxy; without ARGS it uses the embedded defaults (listen 0.0.0.0:8080, admin
# 127.0.0.1:9090, upstream http://127.0.0.1:5001). Example: make run ARGS="--config conf/dify-shaper.toml"
run: deps
	$(CARGO) run --release --bin dify-shaper -- run $(ARGS)

# The whole test suite (unit + integration against the simulator on 127.0.0.1, and the
# end-to-end suite against real gunicorn + PostgreSQL, whose tools e2e/setup.sh installs when
# missing). A failed setup does not stop the run: the e2e tests then fail saying why.
test: deps
	@bash e2e/setup.sh || echo "e2e/setup.sh failed: the end-to-end tests (tests/it/gunicorn_e2e.rs) will fail" >&2
	$(CARGO) test

# The docker suite (e2e/docker/run.sh): the sidecar in Dify's own compose project on a real
# Docker engine, under load, side by side with no dify-shaper. Needs root: it installs
# docker.io and debootstrap when missing and starts its own dockerd (skips with one line where
# no engine can run). A few minutes; the first run on a machine also makes the base image.
test-docker: deps
	bash e2e/docker/run.sh

# The chaos soak (scripts/soak/soak.py): open-loop load through the proxy while the backend is
# terminated, killed, stopped and restarted and the proxy reloaded (valid and invalid configs)
# and drained; then every request must have been answered once, nothing run twice, no panic,
# memory flat, queues empty and the counters consistent. Two legs: the simulator, then real
# gunicorn (e2e/app.py; skipped in one line without `bash e2e/setup.sh`, a failure with
# SOAK_REQUIRE_GUNICORN=1). SOAK is the load per leg (CI runs SOAK=60s); SOAK_SEED replays a
# run; SOAK_BIN runs a prebuilt binary instead of building target/release/dify-shaper.
SOAK ?= 10m
soak: deps
	@if [ -z "$$SOAK_BIN" ]; then $(CARGO) build --release --bin dify-shaper; fi
	python3 scripts/soak/soak.py --duration "$(SOAK)"

lint: deps check-modules
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# The library's module graph has no cycles: layers point one way (the checker tests itself
# first; `python3 scripts/module-cycles.py --graph` prints the whole graph).
check-modules:
	python3 scripts/module-cycles.py --self-test
	python3 scripts/module-cycles.py

fmt:
	$(CARGO) fmt --all

bench: deps
	$(CARGO) bench

check-config: deps
	$(CARGO) run --release --bin dify-shaper -- check conf/dify-shaper.toml

clean:
	$(CARGO) clean
