# adpo-ray: `make run` runs the main job, `make test` the whole test suite.
# Both create .venv on first use (CPU torch first, then the package) and reuse it afterwards.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0

.PHONY: run test install lint scenarios clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/adpo-ray scenarios
	$(BIN)/adpo-ray validate tune_configs/*.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check adpo_ray tests bench run_grid.py

scenarios: $(STAMP)
	$(BIN)/adpo-ray scenarios

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info
