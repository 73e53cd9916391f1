# Two commands on a fresh machine: `make demo` and `make test`. Each installs what is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test lint typecheck unit data browser bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,transformers,service]'
	# the onnx extra without onnx2torch's torchvision (PyPI's does not import beside this torch)
	$(PY) -m pip install -q 'onnx>=1.15' 'onnxscript>=0.1' torch==2.13.0
	$(PY) -m pip install -q --no-deps 'onnx2torch>=1.5.15'
	rm -f $(VENV)/.installed-*
	touch $@

data:
	@test -n "$$SECINFER_FASHION_MNIST" -o -d $(FMNIST) || { echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
	  (apt-get update -q && apt-get install -y -q dataset-fashion-mnist) >/dev/null || \
	  { echo "could not install dataset-fashion-mnist: run as root, or set SECINFER_FASHION_MNIST to a folder with its files (see README)"; exit 1; }; }

# the gateway's web-page test drives Debian's chromium headless through its chromedriver
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { echo "installing chromium and chromium-driver (Debian)"; \
	  (apt-get update -q && apt-get install -y -q chromium chromium-driver) >/dev/null || \
	  { echo "could not install chromium chromium-driver; run as root or install them yourself"; exit 1; }; }

demo: $(STAMP) data
	$(PY) -m secinfer demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks experiments

typecheck: $(STAMP)
	$(VENV)/bin/mypy src/secinfer experiments

unit: $(STAMP) data browser
	$(VENV)/bin/pytest -q --durations=25

test: lint typecheck unit

bench: $(STAMP) data
	$(PY) -m pip install -q -e '.[bench]'
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache

# SecretFlow SPU for benchmarks/peer_spu.py, in its own venv (it needs JAX; .venv keeps torch only).
.PHONY: spu-venv
spu-venv: .venv-spu/.installed
.venv-spu/.installed:
	test -x .venv-spu/bin/python || $(PYTHON) -m venv .venv-spu
	.venv-spu/bin/python -m pip install -q 'spu==0.9.5' numpy safetensors
	touch $@
