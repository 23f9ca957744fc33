# cxrexplain: two commands for a newcomer — `make serve` (demo) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_WEIGHTS := .cache/demo-weights
DEMO_RECIPE := export/demo_recipe.yaml
RUN_DIR := .run
SOAK_MINUTES ?= 10

# Debian packages the tests use, as command-or-file:package. Installed with apt-get when missing and run as root
# (CI, a fresh machine); otherwise `make` names them and stops. Orthanc (a real PACS, with its DICOMweb plugin),
# dcmtk's storescu and Chromium (renders the HTML report) serve the PACS and report tests.
SYSTEM_TOOLS := java:openjdk-17-jre-headless promtool:prometheus dciodvfy:dicom3tools Orthanc:orthanc \
	/usr/share/orthanc/plugins/libOrthancDicomWeb.so:orthanc-dicomweb storescu:dcmtk chromium:chromium

.PHONY: help venv system java lint typecheck pytest test demo-models archives serve stop soak clean gpu-check

help:
	@echo "make serve   install, train+export the demo archives, start TorchServe on localhost"
	@echo "make stop    stop the demo TorchServe"
	@echo "make test    install, lint, type-check, run the tests (real TorchServe included)"
	@echo "make soak    4 and 16 clients on the demo archives for 10 min: latency, errors, worker memory (SOAK_MINUTES=2)"
	@echo "make gpu-check  on a CUDA machine, with its python3 (no .venv): every method on the GPU against the CPU"
	@echo "             and its cost there, as Markdown in $(GPU_CHECK_OUT) (GPU_CHECK_OUT=..., PYTHON=...)"

$(STAMP): pyproject.toml client/pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required: apt-get install python3.11 python3.11-venv (or set PYTHON=...)"; exit 1; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[serve,test]'
	$(BIN)/pip install -q -e './client[dicom,gateway]'
	touch $(STAMP)

venv: $(STAMP)

system:
	@missing=""; for pair in $(SYSTEM_TOOLS); do command -v $${pair%%:*} >/dev/null || [ -e $${pair%%:*} ] || missing="$$missing $${pair#*:}"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages:$$missing; install them: sudo apt-get install -y$$missing"; exit 1; fi; \
	echo "installing Debian packages:$$missing"; \
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing

java: system
	@$(BIN)/python -m export.java_check

lint: venv
	$(BIN)/ruff check handlers lab export client tests benchmarks protos scripts
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

pytest: venv java
	$(BIN)/pytest -q

test: lint typecheck pytest

demo-models: venv
	$(BIN)/python -m cxrexplain_lab.train_demo --out $(DEMO_WEIGHTS) --size 96 --cache .cache/demo-cache

archives: demo-models
	$(BIN)/cxrexplain-export $(DEMO_RECIPE) --store model_store

serve: archives java
	$(BIN)/python -m export.launcher start --store model_store --run-dir $(RUN_DIR)

# Its own TorchServe on free ports, state in .run/soak: runs beside `make serve` without touching it.
soak: archives java
	$(BIN)/python -m benchmarks.soak --store model_store --run-dir $(RUN_DIR)/soak --minutes $(SOAK_MINUTES)

stop:
	$(BIN)/python -m export.launcher stop --run-dir $(RUN_DIR)

# A lent GPU machine has its own python3 and torch but none of .venv's packages, Java or a registry: so this
# target needs no venv and runs a module that imports only the engine, torch and the standard library.
# Not OUT: that name is often an environment variable (make imports those).
GPU_CHECK_OUT ?= build/gpu_check.md
gpu-check: PYTHON = python3
gpu-check:
	PYTHONPATH=handlers $(PYTHON) -m benchmarks.gpu_check --out $(GPU_CHECK_OUT)

clean: stop
	rm -rf $(RUN_DIR) model_store/*.mar model_store/manifest.json
