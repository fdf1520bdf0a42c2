# The README's two commands: `make demo` and `make test`. Both set up .venv on a fresh machine,
# ROS 2 (Kilted's rclpy on Fast DDS, from PyPI) included: the `ros` extra.
#
# torch is pinned here, in the make path only: 2.13.0 is the CPU build these machines carry
# (an unpinned `torch` would pull gigabytes of CUDA packages). GPU users install the package
# with their own torch build instead: `pip install -e .[train]`. Override with
# `make TORCH_SPEC='torch==X' test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-$(shell $(PYTHON) -c "import hashlib,pathlib;print(hashlib.sha1(pathlib.Path('setup.py').read_bytes()).hexdigest()[:10])")
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: all demo test lint format bench fuzz soak model venv clean gpu-check

all: test

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet '$(TORCH_SPEC)'
	$(BIN)/python -m pip install --quiet -e '.[train,test,ros,openvino]'
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/semseg demo --out runs/demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Coverage of this package, the node and tool processes the tests start included (coverage's
# subprocess patch); the data stays in .coverage and the per-module table is printed.
test: lint
	rm -f .coverage .coverage.*
	$(BIN)/python -m pytest --cov --cov-report=term

bench: $(STAMP)
	$(BIN)/semseg bench --out runs/bench

# The prepared GPU check (semseg_ros/gpu_check.py): any Python with a CUDA torch, no venv
# needed, < 8 min; writes runs/gpu_check/gpu_check.json and .log. Exits at once without a GPU.
GPU_PYTHON ?= python3
gpu-check:
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) -m semseg_ros.cli gpu-check --out runs/gpu_check

# Hostile input: 10,000 generated camera and ground-truth messages each through the node's
# message path, and 3,000 malformed ground-truth messages through the node process (make test
# runs 300 of each, seeded); SEMSEG_FUZZ_SEED=<n> picks another seed.
fuzz: $(STAMP)
	SEMSEG_FUZZ_EXAMPLES=10000 SEMSEG_FUZZ_PROCESS_MESSAGES=3000 \
		$(BIN)/python -m pytest -s -p no:cacheprovider test/test_fuzz.py

# The real node for 10 minutes under 800x600 bgra8 at 30 Hz with the shipped model: memory,
# latency and every frame accounted for (semseg_ros/soak.py; make test runs 30 s of it).
soak: $(STAMP)
	$(BIN)/python -m semseg_ros.soak --duration 600 --warmup 120 --json runs/soak/report.json

# The shipped demo model: train with the default CPU config on synthetic data (~12 min on two
# cores), evaluate it on its test split, export it to ONNX. models/README.md records a run.
model: $(STAMP)
	$(BIN)/semseg train --config cpu --out runs/train/cpu_default
	$(BIN)/semseg evaluate --checkpoint runs/train/cpu_default/best.pt --split test
	$(BIN)/semseg export --checkpoint runs/train/cpu_default/best.pt --out models/semseg_demo.onnx --int8

clean:
	rm -rf build install log runs .pytest_cache .ruff_cache *.egg-info
