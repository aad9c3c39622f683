# The two quick-start commands (see README): `make smoke` and `make test`. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: smoke test test-fast dryrun

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,peers,slurm]"
	touch $@

# The whole DAG (generate -> measure -> aggregate -> render) on the committed CPU proxies. On CPUs one job
# per core: one torch thread each (OMP_NUM_THREADS=1), and the default profile's one-at-a-time `gpu`
# resource raised to the core count; latency and schedule training still own every core (their rules set
# threads and OMP_NUM_THREADS themselves).
CORES ?= 2
smoke: $(VENV)/.installed
	OMP_NUM_THREADS=1 snakemake --configfile tests/smoke.yaml --replace-workflow-config --resources gpu=$(CORES) --cores $(CORES) smoke
	snakemake --configfile tests/smoke.yaml --replace-workflow-config --report results/report.html smoke
	@cat results/tables/table1.md results/tables/table2.md results/tables/table3.md
	@echo "report: $(abspath results/report.html)"

# Serial: two pytest-xdist workers (`-n 2 --dist loadfile`) slowed the smoke DAG past its time limit on
# 2 cores (136 of 170 jobs in 43 min beside the rest of the suite).
test: $(VENV)/.installed
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

# The paper's full DAG, planned without running anything (no weights needed).
dryrun: $(VENV)/.installed
	snakemake -n --cores 8 table1
