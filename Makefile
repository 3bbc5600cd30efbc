# Two commands do all the set-up on a fresh machine:
#   make test   - create .venv when missing, install nfaudio[dev,onnx,openvino,int8,parquet,dask,index], run the tests
#                 (integration runs included; `make test-unit` leaves them out, `make test-all` adds slow and gpu)
#   make demo   - create .venv when missing, install nfaudio, run the built-in demo
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.nfaudio-installed

.PHONY: venv test test-unit test-all demo lint bench clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,onnx,openvino,int8,parquet,dask,index]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-unit: $(STAMP)
	$(PY) -m pytest -q -m 'not slow and not gpu and not integration'

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

lint: $(STAMP)
	$(VENV)/bin/ruff check nfaudio tests benchmarks

demo: $(STAMP)
	$(VENV)/bin/nfaudio demo --out runs/demo

bench: $(STAMP)
	$(PY) benchmarks/frontend.py
	$(PY) benchmarks/models.py
	$(PY) benchmarks/predict.py

clean-venv:
	rm -rf $(VENV)
