# Two user commands: `make demo` and `make test`. Both do all set-up first (idempotent):
# Debian packages (FAISS headers + the FAISS Python module they match, SWIG), a .venv that
# sees the system FAISS, the Python dependencies under a numpy<2 constraint, and the build.

SHELL := /bin/bash
PYTHON_SYS ?= /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
APT_PACKAGES := libfaiss-dev python3-faiss python3-numpy python3-venv python3-dev swig g++ make libopenblas-dev

.PHONY: demo test setup system-deps venv build clean fuzz bench bench-peers

demo: setup
	$(PY) -m faiss_turboquant.demo

test: setup
	$(PY) -m pytest -q tests

setup: system-deps venv build

# Install the Debian packages only when one is missing, so repeated runs are fast and offline.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# --system-site-packages keeps Debian's FAISS (built for numpy 1.x) importable; constraints.txt
# pins numpy<2 so no later install can break `import faiss`.
$(VENV)/.deps-stamp: requirements.txt constraints.txt
	[ -x $(PY) ] || $(PYTHON_SYS) -m venv --system-site-packages $(VENV)
	$(PIP) install -c constraints.txt -r requirements.txt
	touch $@

venv: system-deps $(VENV)/.deps-stamp

build: venv
	$(PY) setup.py -q build_ext --inplace

# Long fuzzing run of the index reader (a bounded run is part of `make test`);
# FUZZ_RUNS=N sets the number of inputs of each fuzzer. Findings go to build/fuzz-findings.
fuzz: setup
	mkdir -p build/fuzz-corpus build/fuzz-work build/fuzz-findings
	$(PY) tests/fuzz/make_corpus.py build/fuzz-corpus
	$(PY) tests/fuzz/fuzz_reader.py -runs=$${FUZZ_RUNS:-100000} -timeout=10 -rss_limit_mb=4096 \
	    -artifact_prefix=build/fuzz-findings/ build/fuzz-work build/fuzz-corpus
	$(PY) tests/fuzz/mutate.py -n $${FUZZ_RUNS:-100000} --all-truncations \
	    --findings build/fuzz-findings --json build/fuzz-findings/mutate.json

# Benchmarks (not part of CI): the peers environment (FAISS 1.15.1 wheel + numpy 2, turbovec,
# nanoindex-rag) lives in its own .venv-peers; `make bench` measures everything in one run
# and regenerates benchmarks/RESULTS.md.
bench-peers: setup
	bash benchmarks/peers_env.sh

bench: setup bench-peers
	PY=$(PY) bash benchmarks/bench_all.sh

clean:
	rm -rf build faiss_turboquant/*.so faiss_turboquant/swigturboquant.py faiss_turboquant/swigturboquant_wrap.cpp
