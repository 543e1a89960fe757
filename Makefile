# tff-prune: every target bootstraps .venv first when it is missing or stale.
#   make experiment   - federated structured pruning on the built-in eSpeak corpus
#   make test         - the test suite (what CI runs)
#   make findings     - the paper's findings, side by side with seeds (bench/results/findings.md)
# ARGS="--flag=value ..." passes extra flags to run_experiment.py.

PYTHON      ?= python3.11
VENV        := .venv
VPY         := $(VENV)/bin/python
TFF_VERSION := 0.87.0
# The stamp records the hash of everything that decides the environment, so
# editing requirements.txt or this Makefile rebuilds .venv on the next target.
STAMP       := $(VENV)/.tff-prune-stamp
ENV_HASH    := $(shell cat requirements.txt Makefile 2>/dev/null | sha256sum | cut -c1-16)
ARGS        ?=
PYTEST_ARGS ?=

.PHONY: venv experiment test check-deps bench findings clean-venv

venv:
	@if [ ! -x "$(VPY)" ] || [ "$$(cat $(STAMP) 2>/dev/null)" != "$(ENV_HASH)" ]; then \
	  set -e; \
	  echo "[setup] building $(VENV) (requirements changed or missing)"; \
	  rm -rf $(VENV); \
	  $(PYTHON) -m venv $(VENV); \
	  $(VPY) -m pip install --quiet --upgrade pip; \
	  $(VPY) -m pip install --quiet -r requirements.txt; \
	  $(VPY) -m pip install --quiet --no-deps tensorflow-federated==$(TFF_VERSION); \
	  $(MAKE) --no-print-directory check-deps; \
	  echo "$(ENV_HASH)" > $(STAMP); \
	  echo "[setup] $(VENV) ready"; \
	fi

# `pip check` must report nothing but the documented jax/jaxlib substitution.
check-deps:
	@$(VPY) -m pip check > $(VENV)/pip-check.txt 2>&1 || true; \
	if grep -vE '^tensorflow-federated $(TFF_VERSION) has requirement jax(lib)?==0\.4\.14, but you have jax(lib)? 0\.4\.13\.$$' \
	     $(VENV)/pip-check.txt | grep -v '^No broken requirements found\.$$' | grep . ; then \
	  echo "[setup] pip check found inconsistencies beyond the jax/jaxlib 0.4.13 substitution" >&2; exit 1; \
	fi; \
	echo "[setup] pip check: consistent (only the documented jax/jaxlib 0.4.13 substitution)"

experiment: venv
	$(VPY) run_experiment.py --pruning=structured $(ARGS)

test: venv
	$(VPY) -m pytest $(PYTEST_ARGS)

bench: venv
	$(VPY) -m bench.export_sizes
	$(VPY) -m bench.round_costs
	$(VPY) -m bench.round_costs --orchestration_only --repeats=10 --skip_client_cost \
	  --out=bench/results/orchestration
	$(VPY) -m bench.pruning_overhead
	$(VPY) -m bench.scaling
	$(VPY) -m bench.data_scaling
	$(VPY) -m bench.device_step --model_size=medium

# The paper's findings, seeds 0 and 1 side by side (one process each, about 1 h
# here), then judged together into bench/results/findings.{md,json}. Runs live
# in $(FINDINGS_WORK) and are resumed if interrupted (--reuse).
FINDINGS_WORK ?= /tmp/tff_prune_bench
findings: venv
	@$(VPY) -m bench.findings --seeds=0 --reuse --work_dir=$(FINDINGS_WORK) \
	  --out=$(FINDINGS_WORK)/findings_seed0 $(ARGS) & seed0=$$!; \
	$(VPY) -m bench.findings --seeds=1 --reuse --work_dir=$(FINDINGS_WORK) \
	  --out=$(FINDINGS_WORK)/findings_seed1 $(ARGS) & seed1=$$!; \
	wait $$seed0 && wait $$seed1
	$(VPY) -m bench.findings --work_dir=$(FINDINGS_WORK) \
	  --merge=$(FINDINGS_WORK)/findings_seed0.json,$(FINDINGS_WORK)/findings_seed1.json

clean-venv:
	rm -rf $(VENV)
