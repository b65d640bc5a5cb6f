# The one task runner: people, CI and the workflows all call these targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

UV_VERSION := 0.13.9
UV := $(or $(shell command -v uv 2>/dev/null),$(CURDIR)/.tools/bin/uv)
# `install` keeps .venv in step with uv.lock, so runs skip uv's own sync check. UV_SYNC_FLAGS=--no-dev leaves out
# the development packages (the release jobs, which run no tests).
RUN := $(UV) run --no-sync

# No telemetry from the tools, and no Python downloads: use the interpreter that is here.
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := true
export BENTOML_DO_NOT_TRACK := True
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON ?= python3

# The traffic `make run` and `make replay` send to production: by default the model's own test period
# (rows the evaluated model never trained on); REPLAY_FROM and REPLAY_TO (YYYY-MM-DD) pick other dates.
REPLAY := forkcast replay --env production $(if $(REPLAY_FROM),--from $(REPLAY_FROM)) $(if $(REPLAY_TO),--to $(REPLAY_TO))

.PHONY: help install data run dataset repro build staging production status stop summary test test-fast lint lint-workflows format typecheck ui new-data replay drift probe bench bench-serving bench-faults bench-drift clean

help: ## Show the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "} {printf "  %-14s %s\n", $$1, $$2}'

$(CURDIR)/.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

.venv/.installed: uv.lock pyproject.toml | $(UV)
	@# Bytecode compiled once here: where PYTHONDONTWRITEBYTECODE is set, every run would recompile mlflow.
	$(UV) sync --locked $(UV_SYNC_FLAGS) $(if $(PYTHONDONTWRITEBYTECODE),--compile-bytecode)
	@touch $@

install: .venv/.installed ## Create .venv with the locked dependencies (installs uv first if needed)

data: install ## Fetch the data from the DVC remote when it is missing (the default remote lives in the repository)
	@# Only when missing: a pull would refuse to overwrite data you changed and have not `dvc add`-ed yet.
	@if [ -e data ] && [ -e feed ]; then echo "data/ and feed/ present (after a git checkout: dvc checkout)"; \
	else $(RUN) dvc pull data.dvc feed.dvc; fi

run: data ## The main job: pipeline, bento, staging + smoke, approved production + smoke, replayed traffic, drift report
	$(RUN) dvc repro
	$(RUN) forkcast build
	$(RUN) forkcast deploy --env staging
	$(RUN) forkcast smoke --env staging
	$(RUN) forkcast deploy --env production --approve
	$(RUN) forkcast smoke --env production
	$(RUN) $(REPLAY)
	@# Exit 1 means drift was found: here that is the report's finding, not a failed run.
	$(RUN) forkcast drift --env production || [ $$? -eq 1 ]
	$(RUN) forkcast summary
	@echo "Staging and production keep serving in the background: make status, make stop."

dataset: install ## What dataset.yaml declares, and what is derived from it (features, contract, baseline, checks)
	$(RUN) forkcast dataset

repro: install ## dvc repro only (reruns just the stages whose inputs changed)
	$(RUN) dvc repro

build: install ## Build the bento from the pipeline's model (ALIAS=production builds that MLflow alias instead)
	$(RUN) forkcast build $(if $(ALIAS),--alias $(ALIAS))

staging: install ## Deploy the last build to local staging and smoke-test it
	$(RUN) forkcast deploy --env staging
	$(RUN) forkcast smoke --env staging

production: install ## Promote staging's bento to local production (you approve by running this) and smoke-test it
	$(RUN) forkcast deploy --env production --approve
	$(RUN) forkcast smoke --env production

status: install ## What runs where (bento, URL, pid, health, smoke result)
	$(RUN) forkcast status

stop: install ## Stop the local staging and production services
	$(RUN) forkcast undeploy --env all

summary: install ## Print the summary of the last run
	$(RUN) forkcast summary

# Two workers, a test file each: the slow tests mostly wait on servers, dvc and act, so two cores do twice the work.
TEST_WORKERS ?= 2

test: install ## All tests, slow end-to-end ones included (TEST_WORKERS=2 files at a time)
	$(RUN) pytest -n $(TEST_WORKERS) --dist loadfile

test-fast: install ## Tests without the slow end-to-end ones
	$(RUN) pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow"

lint: install ## Lint and check formatting
	$(RUN) ruff check .
	$(RUN) ruff format --check .

lint-workflows: install ## Check workflows and actions: schema, actionlint (with shellcheck), zizmor, deploy scripts
	$(RUN) check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(RUN) check-jsonschema --builtin-schema vendor.github-actions .github/actions/*/action.yml
	$(RUN) jactionlint
	$(RUN) zizmor --offline --min-severity medium --strict-collection .github
	$(RUN) shellcheck deploy/targets/*.sh bin/forkcast

format: install ## Format and fix what ruff can
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

typecheck: install ## Type-check the package
	$(RUN) mypy

ui: install ## Browse runs and registered models in the MLflow UI (http://127.0.0.1:5000)
	$(RUN) mlflow ui --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///.mlflow/mlflow.db}" --port 5000

new-data: data ## Simulate new data (then commit data.dvc and .dvc/storage): MONTH=YYYY-MM keeps the feed through that month, else the next month arrives
	$(RUN) forkcast new-data $(if $(MONTH),--through $(MONTH),--next-month)
	$(RUN) dvc add data
	$(RUN) dvc push data.dvc

replay: install ## Send real rows to local production (the model's test period, or REPLAY_FROM/REPLAY_TO) and keep their labels
	$(RUN) $(REPLAY)

drift: install ## Drift report of production's logged traffic vs the training data (exit 1: drift, 3: no data yet)
	$(RUN) forkcast drift --env production

probe: install ## Health of local production: /readyz, /livez, one timed prediction, /metrics
	$(RUN) forkcast probe --env production

bench: install ## Time and peak memory of each stage at 10k, 100k and 1M rows
	$(RUN) python benchmarks/pipeline.py

bench-serving: install ## Latency and throughput: in-process, this service, mlflow models serve, Flask (needs wrk)
	$(RUN) python benchmarks/serving.py

bench-faults: install ## The service and tooling under faults: full log disk, dying tracking server, killed parent, hostile headers
	$(RUN) python benchmarks/faults.py

bench-drift: install ## Time and peak memory of the drift report at 10k, 100k and 1M logged rows
	$(RUN) python benchmarks/drift.py

clean: stop ## Stop the services; remove pipeline outputs, bentos and the local MLflow store (keeps data and .venv)
	rm -rf outputs/prepared outputs/model outputs/served outputs/registry outputs/build outputs/deploy outputs/smoke outputs/release \
		outputs/drift outputs/labels outputs/probe .mlflow .bentoml
