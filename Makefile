# porter: every target installs what it needs first (uv, then the locked environment in .venv).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PORTER := $(VENV)/bin/porter
UV_VERSION := 0.13.9
DEMO_RUN ?= runs/demo

.PHONY: setup serve-env demo test test-gpu lint bench clean

# EXTRAS: the extras of porter's normal environment, named once. `uv sync` removes every extra it
# is not given, so each sync below names all of them (the bench sync adds its own on top).
EXTRAS := --extra dev --extra openvino
UV_INSTALL := python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet "uv==$(UV_VERSION)"

# uv resolves torch + torchvision together from uv.lock (see DEVELOPERS.md); `python3 -m uv`
# works whether pip put the uv binary on PATH or not. --compile-bytecode writes the .pyc files
# once at install: where PYTHONDONTWRITEBYTECODE is set (CI, these machines) Python would
# otherwise recompile torch and torchvision from source in every process (~2x slower start).
$(VENV)/.synced: pyproject.toml uv.lock
	@$(UV_INSTALL)
	python3 -m uv sync --frozen $(EXTRAS) --compile-bytecode
	@touch $@

setup: $(VENV)/.synced

# The bench environment is the normal one plus the bench extra (NNCF), a superset: `make test`
# after `make bench` runs as before. It depends on the normal stamp, so a re-sync there (which
# drops NNCF) makes the next `make bench` sync again.
$(VENV)/.synced-bench: $(VENV)/.synced pyproject.toml uv.lock
	python3 -m uv sync --frozen $(EXTRAS) --extra bench --compile-bytecode
	@touch $@

# `porter serve`'s Triton server runs in its own environment: PyTriton's Python-backend stub
# needs numpy < 2 (see port/serve/requirements.txt); porter finds it at .venv-serve.
SERVE_VENV := .venv-serve
$(SERVE_VENV)/.synced: port/serve/requirements.txt
	python3 -m uv venv -q --allow-existing \
	    -p "$$($(PY) -c 'import sys; print(sys._base_executable)')" $(SERVE_VENV)
	python3 -m uv pip install -q -p $(SERVE_VENV)/bin/python --compile-bytecode --require-hashes \
	    -r port/serve/requirements.txt
	@touch $@

serve-env: setup $(SERVE_VENV)/.synced

# Train on the built-in synthetic set, export to ONNX (FP32, FP16, INT8) and an OpenVINO IR,
# compare everything (PyTorch, ONNX Runtime and OpenVINO rows).
demo: setup
	rm -rf $(DEMO_RUN)
	$(PORTER) train --run $(DEMO_RUN) --recipe quick
	$(PORTER) export --run $(DEMO_RUN) --to onnx
	$(PORTER) export --run $(DEMO_RUN) --to onnx --precision fp16
	$(PORTER) export --run $(DEMO_RUN) --to onnx --precision int8
	$(PORTER) export --run $(DEMO_RUN) --to openvino
	$(PORTER) evaluate --run $(DEMO_RUN) --compare
	$(PORTER) status --run $(DEMO_RUN)

test: setup serve-env
	$(PY) -m pytest -q

test-gpu: setup
	$(PY) -m pytest -q -m gpu

lint: setup
	$(VENV)/bin/ruff check .

bench: $(VENV)/.synced-bench
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .cache
