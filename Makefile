# adpo-ray: `make run` runs the main job, `make test` the whole test suite.
# Both create .venv on first use (torch first, then the package) and reuse it afterwards.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0
# Debian's Chromium drives the MLflow UI browser test (Playwright never downloads a browser here);
# without its recommended packages: 19 packages instead of 107, 8 s against 14 s to install.
CHROMIUM := /usr/bin/chromium
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test test-unit install lint scenarios mlflow-ui report docs clean

# pip chooses torch's wheel, so that pip's own settings (a local wheel, a CPU index) choose the
# build; uv installs it with the other ~170 packages, in a third to a half of pip's time. Bytecode
# is compiled at install: where PYTHONDONTWRITEBYTECODE is set, every Ray worker would otherwise
# recompile Ray, torch and MLflow at each start.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	rm -rf $(VENV)/wheels
	$(BIN)/python -m pip download --quiet --no-deps --dest $(VENV)/wheels $(TORCH)
	$(BIN)/uv pip install --quiet --python $(BIN)/python --compile-bytecode $(VENV)/wheels/torch-*.whl -e '.[dev]'
	rm -rf $(VENV)/wheels
	touch $(STAMP)

install: $(STAMP)

# The main job: the smoke grid (24 short trials) on an embedded Ray, MLflow in ./mlflow.db.
run: $(STAMP)
	$(BIN)/python run_grid.py --config tune_configs/smoke.yaml

# The report of the latest smoke launch (tables with CIs, plots) into reports/smoke.
report: $(STAMP)
	$(BIN)/adpo-ray report --experiment smoke --out reports/smoke

# The MLflow UI over the default local store, on 127.0.0.1 only (without MLflow's job runner,
# seven processes for GenAI jobs this project does not use).
mlflow-ui: $(STAMP)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --default-artifact-root $(CURDIR)/mlartifacts --host 127.0.0.1 --port 5000

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium

# Both tiers: tests/unit (pure, no Ray start, under a minute) and tests/integration (real Ray,
# RLlib, Tune, MLflow, a two-node cluster, the MLflow UI in Chromium). Three pytest-xdist workers
# on any machine: the integration tests often wait (on Ray starting, on a grid's snapshots), so
# three share two cores well (four measured slower). A free worker takes the next test; the
# integration tests go first, so the many short unit tests fill the end, and the tests that
# read one module-scoped grid share a worker (`xdist_group`), so that grid is launched once.
TEST_WORKERS ?= 3
# The venv and Chromium install side by side (one is mostly unpacking, the other downloading).
test:
	$(MAKE) --no-print-directory -j2 $(STAMP) $(CHROMIUM)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=30 tests/integration tests/unit

# The fast tier alone.
test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

# The documentation site (docs/, mkdocs-material + mkdocstrings), built strict into site/.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: $(STAMP)
	$(BIN)/ruff check adpo_ray tests bench run_grid.py

scenarios: $(STAMP)
	$(BIN)/adpo-ray scenarios

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info site
