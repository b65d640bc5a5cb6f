"""Typed settings: `params.yaml` holds every knob of the model and the gates; `dataset.yaml` declares the data.

Each section is a frozen pydantic model with `extra="forbid"`, so a typo in
`params.yaml` fails fast and names the offending key and the allowed ones.
Both files load into one `Params` (the declaration as `params.dataset`).
Infrastructure (tracking URI, remotes) lives in environment variables instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from forkcast.data import declaration
from forkcast.data.declaration import Dataset, DeclarationError
from forkcast.paths import PARAMS_FILE


class ConfigError(Exception):
    """`params.yaml` is missing, unreadable or has an invalid value."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class ValidateParams(_Section):
    # The stage fails when the share of checks that pass falls below this.
    min_share_of_checks_passed: Fraction = 1.0
    # A check passes when at least this share of rows passes it ...
    default_min_pass_rate: Fraction = 1.0
    # ... unless overridden here, by check name (see the validation report).
    min_pass_rate: dict[str, Fraction] = {}
    failure_samples: Annotated[int, Field(ge=0, le=100)] = 5


class SplitParams(_Section):
    # Chronological split by whole days: train, then validation, then test.
    validation_fraction: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.15
    test_fraction: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.15


class HistGradientBoostingParams(_Section):
    learning_rate: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    max_iter: Annotated[int, Field(ge=1)] = 100
    max_leaf_nodes: Annotated[int, Field(ge=2)] = 31
    min_samples_leaf: Annotated[int, Field(ge=1)] = 20
    l2_regularization: Annotated[float, Field(ge=0.0)] = 0.0
    # scikit-learn turns early stopping on by itself above 10,000 rows; say it explicitly instead.
    early_stopping: bool = False


class RandomForestParams(_Section):
    n_estimators: Annotated[int, Field(ge=1)] = 200
    max_depth: Annotated[int, Field(ge=1)] | None = None
    min_samples_leaf: Annotated[int, Field(ge=1)] = 2
    max_features: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0


class TrainParams(_Section):
    model: Literal["hist_gradient_boosting", "random_forest"] = "hist_gradient_boosting"
    seed: int = 42
    # Threads for fitting. On shared 2-core runners more threads than free cores (oversubscription)
    # made training up to 10x slower; raise it on a machine of your own.
    threads: Annotated[int, Field(ge=1)] = 1
    hist_gradient_boosting: HistGradientBoostingParams = HistGradientBoostingParams()
    random_forest: RandomForestParams = RandomForestParams()
    # ONNX must reproduce scikit-learn's predictions: |difference| <= this x max(1, |prediction|), i.e. absolute
    # below 1 (in the target's unit) and relative above (float32 rounding grows with the values).
    onnx_tolerance: Annotated[float, Field(gt=0.0)] = 0.001
    # After evaluation, fit the served model again with the same settings on every row up to the newest, so the
    # release knows the latest data (the evaluated model never saw the validation and test periods).
    refit_on_all: bool = True

    def hyperparameters(self) -> dict[str, Any]:
        """The hyperparameters of the selected model family only."""
        chosen: _Section = getattr(self, self.model)
        return chosen.model_dump()

    def recipe(self) -> dict[str, Any]:
        """What decides the fitted model besides the data: the family, its hyperparameters and the seed."""
        return {"model": self.model, "seed": self.seed, "hyperparameters": self.hyperparameters()}

    def with_recipe(self, recipe: dict[str, Any]) -> TrainParams:
        """These settings with another model's recipe (as its metadata records it): to retrain that model."""
        family = recipe["model"]
        return self.model_validate(
            {**self.model_dump(), "model": family, "seed": recipe["seed"], family: recipe["hyperparameters"]}
        )


class GateParams(_Section):
    metric: Literal["rmse", "mae"] = "rmse"
    # A floor that does not move: the candidate's backtest error must be at least this share below the naive
    # seasonal baseline's on the same folds.
    min_improvement_over_baseline: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05
    # A candidate may be worse than production, and than each of the last `releases_compared` production
    # releases, by at most this share (the second bound stops a chain of small steps down).
    tolerance: Annotated[float, Field(ge=0.0)] = 0.05
    releases_compared: Annotated[int, Field(ge=1, le=50)] = 5


class BacktestParams(_Section):
    # Rolling origin: the last `folds` blocks of `fold_cycles` natural cycles each (a cycle is a day of hourly
    # rows, a week of daily ones, a year of weekly ones) are each in turn the test, with every earlier row trained on.
    folds: Annotated[int, Field(ge=2, le=52)] = 8
    fold_cycles: Annotated[int, Field(ge=1, le=520)] = 7


class TrackingParams(_Section):
    experiment: str = "forkcast"
    registered_model: str = "forkcast-demand"


Port = Annotated[int, Field(ge=1024, le=65535)]


class ServeParams(_Section):
    # Local deployments (`forkcast deploy`): one port per environment.
    staging_port: Port = 3101
    production_port: Port = 3102
    # Where each environment appends its inference log: a directory (a subdirectory per
    # environment) or s3://bucket/prefix. FORKCAST_INFERENCE_LOG overrides it.
    inference_log: str = "outputs/inference"


class SmokeParams(_Section):
    golden_cases: Annotated[int, Field(ge=1, le=1_000)] = 50  # test rows with known answers
    tolerance: Annotated[float, Field(gt=0.0)] = 0.001  # served vs in-process, as train.onnx_tolerance
    latency_requests: Annotated[int, Field(ge=10)] = 200  # single-record requests, one after another
    p95_budget_ms: Annotated[float, Field(gt=0.0)] = 50.0


class MonitorParams(_Section):
    # `forkcast drift`: the nightly comparison of production traffic with the model's training data.
    # The thresholds were calibrated on the 2011 data (`benchmarks/drift.py --calibrate`; benchmarks/README.md).
    window_days: Annotated[int, Field(ge=1, le=366)] = 1  # how much of the inference log one run reads
    max_rows: Annotated[int, Field(ge=1_000)] = 100_000  # above this, a seeded uniform sample of the window
    # A feature drifts when its distance from the training data reaches this: Jensen-Shannon distance
    # (0-1) for the discrete features, Wasserstein distance in training standard deviations for the
    # continuous ones. Distances, not p-values: with 100,000 rows every p-value is tiny.
    feature_threshold: Annotated[float, Field(gt=0.0)] = 0.3
    drift_share: Annotated[float, Field(gt=0.0, le=1.0)] = 0.3  # input drift: this share of features drifted
    prediction_threshold: Annotated[float, Field(gt=0.0)] = 0.25  # Wasserstein, in training std of predictions
    # With labels, on the same labelled rows: drift when the model's RMSE exceeds the naive seasonal baseline's by more
    # than this share, or when its bias (mean error / mean true value) is beyond ±max_bias ...
    max_error_vs_baseline: Annotated[float, Field(ge=0.0)] = 0.1
    max_bias: Annotated[float, Field(gt=0.0)] = 0.3
    # ... judged only from this many natural cycles of labelled rows (7 days of hours, 7 weeks of days; fewer are
    # reported, not judged).
    min_labelled_cycles: Annotated[float, Field(gt=0.0)] = 7.0
    probe_budget_ms: Annotated[float, Field(gt=0.0)] = 500.0  # `forkcast probe`: one request's latency budget


Cores = Annotated[float, Field(ge=0.1, le=64)]
MIB_PER_WORKER = 384  # a service worker with the model loaded: ~330 MB measured (benchmarks/faults.py)


class EnvironmentResources(_Section):
    """What one environment gets on the `kubernetes` and `self-hosted` targets: the seed's dedicated resources."""

    replicas: Annotated[int, Field(ge=1, le=100)] = 1  # the Deployment's replicas and the autoscaler's floor
    max_replicas: Annotated[int, Field(ge=1, le=100)] = 1  # the autoscaler's ceiling
    # Per replica, requested and limited alike (guaranteed): the workers are the whole cores, each scoring with
    # OMP_NUM_THREADS=cores/workers threads, so the threads never exceed the limit.
    cpu: Cores = 1.0
    memory_mib: Annotated[int, Field(ge=256, le=262_144)] = 1024
    target_cpu_percent: Annotated[int, Field(ge=10, le=100)] = 70  # the autoscaler adds replicas above this
    # Replicas a voluntary disruption (a node drain) must leave running; below `replicas` or a drain blocks.
    min_available: Annotated[int, Field(ge=0, le=100)] = 0

    @model_validator(mode="after")
    def _bounds(self) -> EnvironmentResources:
        if self.max_replicas < self.replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below replicas ({self.replicas})")
        if self.memory_mib < MIB_PER_WORKER * self.workers:
            raise ValueError(
                f"memory_mib ({self.memory_mib}) is below {MIB_PER_WORKER} MiB for each of the {self.workers} workers "
                f"cpu {self.cpu:g} starts: a worker holding the model takes about 330 MB, so it would be killed"
            )
        if self.min_available and self.min_available >= self.replicas:
            raise ValueError(
                f"min_available ({self.min_available}) must be below replicas ({self.replicas}): "
                "otherwise no node can ever be drained"
            )
        return self

    @property
    def workers(self) -> int:
        """Service workers per replica: one per whole core of the limit, at least one."""
        return max(1, int(self.cpu))

    @property
    def threads_per_worker(self) -> int:
        return max(1, int(self.cpu // self.workers))


class DeployParams(_Section):
    # `forkcast target kubernetes`: how long a rollout may take before it is rolled back.
    rollout_timeout_seconds: Annotated[int, Field(ge=30, le=3600)] = 300
    staging: EnvironmentResources = EnvironmentResources()
    production: EnvironmentResources = EnvironmentResources(replicas=2, max_replicas=4, min_available=1)

    def of(self, environment: str) -> EnvironmentResources:
        resources: EnvironmentResources = getattr(self, environment)
        return resources


class Params(_Section):
    dataset: Dataset  # from dataset.yaml, beside params.yaml
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    split: SplitParams = SplitParams()
    train: TrainParams = TrainParams()
    backtest: BacktestParams = BacktestParams()
    gate: GateParams = GateParams()
    tracking: TrackingParams = TrackingParams()
    serve: ServeParams = ServeParams()
    smoke: SmokeParams = SmokeParams()
    deploy: DeployParams = DeployParams()
    monitor: MonitorParams = MonitorParams()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _split_leaves_training_data(self) -> Params:
        if self.split.validation_fraction + self.split.test_fraction >= 0.8:
            raise ValueError("split: validation_fraction + test_fraction must leave at least 20% for training")
        return self


def _describe(error: ValidationError, model: type[BaseModel]) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, item["loc"][:-1])
            lines.append(f"unknown key '{where}'; allowed here: {', '.join(allowed)}")
        else:
            lines.append(f"'{where}': {item['msg']}" if where else item["msg"])
    return "\n".join(lines)


def _allowed_keys(model: type[BaseModel], parent: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in parent:
        fields = getattr(current, "model_fields", None)
        if fields is None:
            return []
        match = next((f for name, f in fields.items() if part in (name, f.alias)), None)
        if match is None:
            return []
        current = match.annotation
    fields = getattr(current, "model_fields", {})
    return sorted(field.alias or name for name, field in fields.items())


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read and validate `params.yaml` and the `dataset.yaml` beside it; raise ConfigError naming the bad key."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} not found: run from the project root") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a mapping of sections, got {type(raw).__name__}")
    if "data" in raw or "dataset" in raw:
        raise ConfigError(
            f"{path}: the data is declared in {declaration.DATASET_FILE} now (file, time, target, columns): "
            "move it there and remove the `data` section"
        )
    try:
        dataset = declaration.load(path.parent / declaration.DATASET_FILE)
    except DeclarationError as exc:
        raise ConfigError(str(exc)) from exc
    try:
        return Params.model_validate({**raw, "dataset": dataset})
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc, Params)}") from exc
