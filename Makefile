# The two commands of the README: `make run` (whole stack, embedded default) and `make test`.
# Both set up what they need first; `make setup` alone does only that.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
TOOLS_STAMP := $(VENV)/.tools-installed
PROTO_STAMP := libs/protos/src/genai/.generated
PROTOS := $(shell find protos -name '*.proto')

PACKAGES := -e libs/common -e libs/protos -e services/auth -e services/history \
	-e services/inference-adapter -e services/gateway -e services/telegram-bot -e tools/devstack \
	-e tools/vllm-sim -e tools/bench

.PHONY: setup system-deps run test test-unit test-integration protos lint clean bench bench-similar

setup: system-deps $(STAMP)

# nginx, redis-server and PostgreSQL's binaries, when missing (apt-get or dnf).
system-deps:
	./scripts/install-system-deps.sh

# llama.cpp (llama-cpp-python compiles it) for a portable x86-64 level instead of this CPU's own: a native
# build uses AMX and AVX-512 wherever the CPU lists them, and virtual machines can list AMX without
# enabling it, which crashes the server at its first generation. The deploy image builds the same way.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

# Third-party tools and libraries first: grpcio-tools is needed to generate the protos.
$(TOOLS_STAMP): constraints.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install -q -c constraints.txt -r requirements-dev.txt
	touch $@

# Generated code is made here (and in the Docker build), never edited or committed.
$(PROTO_STAMP): $(PROTOS) $(TOOLS_STAMP)
	rm -rf libs/protos/src/genai
	mkdir -p libs/protos/src
	$(PY) -m grpc_tools.protoc -I protos --python_out=libs/protos/src \
		--grpc_python_out=libs/protos/src --pyi_out=libs/protos/src $(PROTOS)
	touch $@

# The project's own packages, editable, once the generated code they import exists.
$(STAMP): $(TOOLS_STAMP) $(PROTO_STAMP) $(wildcard */*/pyproject.toml)
	$(PIP) install -q -c constraints.txt --config-settings editable_mode=lenient $(PACKAGES)
	touch $@

protos: $(PROTO_STAMP)

run: setup
	$(PY) -m genai_devstack run

test: setup
	$(PY) -m pytest

test-unit: setup
	$(PY) -m pytest services

test-integration: setup
	$(PY) -m pytest tests

# Overhead and throughput of the whole path beside LiteLLM (docs/benchmarks.md); not part of `make test`.
# BENCH_QUICK=1: short runs; BENCH_PROFILE=0: no py-spy profile; BENCH_LITELLM=0: without LiteLLM.
bench: setup
	$(PY) -m genai_bench --invoked-as "make bench$(if $(BENCH_QUICK), BENCH_QUICK=$(BENCH_QUICK))"

# The similar-request layer: precision and recall on the labelled set, look-up latency at 1,000 and 100,000
# entries (a Redis on 127.0.0.1:6379, database 15, or BENCH_REDIS_URL).
bench-similar: setup
	$(PY) -m genai_bench.similar --redis-url "$(or $(BENCH_REDIS_URL),redis://127.0.0.1:6379/15)"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .work libs/protos/src/genai
