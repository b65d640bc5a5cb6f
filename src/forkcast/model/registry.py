"""Track a training run in MLflow, register the model, and gate it against production.

Default tracking is a local SQLite store under `.mlflow/` (never committed);
`MLFLOW_TRACKING_URI` switches to a server. mlflow is imported inside the functions
that need it, so the CLI stays fast.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from sklearn.pipeline import Pipeline

from forkcast import atomic
from forkcast.config import GateParams, Params
from forkcast.data.declaration import Inputs, Target
from forkcast.model.estimator import predict
from forkcast.model.metrics import regression_metrics

if TYPE_CHECKING:
    from mlflow import MlflowClient

CANDIDATE = "candidate"
PRODUCTION = "production"


def tracking_uri(local_dir: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(local_dir / 'mlflow.db').resolve()}"


def is_local(uri: str) -> bool:
    return uri.startswith("sqlite:")


class TrackingUnavailableError(Exception):
    """The configured MLflow tracking server does not answer."""


def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """Fail in seconds, with a message saying what to do, rather than after mlflow's long retries."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered: a proxy or an auth layer may guard /health
    except OSError as exc:
        raise TrackingUnavailableError(
            f"cannot reach the MLflow server at {uri} (MLFLOW_TRACKING_URI): {exc}. "
            "Start it, correct the variable, or unset it to track in the local store .mlflow/"
        ) from exc


def use_tracking(local_dir: Path, experiment: str) -> str:
    """Point mlflow at the configured store and experiment; return the experiment id."""
    import mlflow

    uri = tracking_uri(local_dir)
    check_reachable(uri)
    if is_local(uri):
        local_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = str(found.experiment_id)
    else:
        # A local store keeps artifacts next to its database, not in ./mlruns of whatever directory ran it.
        location = (local_dir / "artifacts").resolve().as_uri() if is_local(uri) else None
        experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


@dataclass(frozen=True)
class GateVerdict:
    eligible: bool
    metric: str
    tolerance: float
    candidate_version: str
    candidate_value: float
    production_version: str | None
    production_value: float | None  # production's model scored on the candidate's test set
    allowed_value: float | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge(
    gate: GateParams, candidate_version: str, candidate: dict[str, float],
    production_version: str | None, production: dict[str, float] | None, *, incomparable: str | None = None,
) -> GateVerdict:  # fmt: skip
    """Eligible when no production model exists (or it cannot score these rows: `incomparable` says why), or the
    candidate's error is within tolerance of it."""
    value = candidate[gate.metric]
    if production_version is None or production is None:
        reason = (
            f"production v{production_version} {incomparable}: nothing to compare against, so the candidate is eligible"
            if incomparable
            else f"no model has the alias '{PRODUCTION}' yet: nothing to compare against, so the candidate is eligible"
        )
        return GateVerdict(True, gate.metric, gate.tolerance, candidate_version, value, None, None, None, reason)
    reference = production[gate.metric]
    allowed = reference * (1.0 + gate.tolerance)
    eligible = value <= allowed + 1e-9  # exactly at the tolerance passes, whatever the float rounding
    if reference > 0:
        change = value / reference - 1.0
        relation = "no change" if abs(change) < 5e-4 else f"{abs(change):.1%} {'worse' if change > 0 else 'better'}"
    else:
        relation = "no change" if value == reference else "worse than a perfect production model"
    reason = (
        f"{gate.metric} {value:.3f} vs production v{production_version} {reference:.3f} "
        f"({relation}; at most {gate.tolerance:.1%} worse allowed)"
    )
    return GateVerdict(
        eligible, gate.metric, gate.tolerance, candidate_version, value, production_version, reference, allowed, reason
    )


def flat_params(params: Params) -> dict[str, Any]:
    hyperparameters = {f"{params.train.model}.{k}": v for k, v in params.train.hyperparameters().items()}
    return {
        "model": params.train.model,
        "seed": params.train.seed,
        "split.validation_fraction": params.split.validation_fraction,
        "split.test_fraction": params.split.test_fraction,
        "gate.metric": params.gate.metric,
        "gate.tolerance": params.gate.tolerance,
        **hyperparameters,
    }


def _trusted_types(pipeline: Pipeline) -> list[str]:
    """The scikit-learn types skops needs to be told about to load this pipeline again."""
    import skops.io

    untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(pipeline))
    foreign = [name for name in untrusted if not name.startswith("sklearn.")]
    if foreign:
        raise TypeError(f"the pipeline holds types from outside scikit-learn: {foreign}")
    return list(untrusted)


def production_metrics(
    client: MlflowClient, name: str, test: pd.DataFrame, target: Target
) -> tuple[str | None, dict[str, float] | None, str | None]:
    """Score the production model on the same test rows as the candidate: its version, its metrics, and why it
    could not be scored (it was trained on inputs these rows lack: another declaration of the data)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, PRODUCTION)
    except MlflowException as exc:
        # Only a missing alias means "no production yet"; any other error must not open the gate.
        if exc.error_code in {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"}:
            return None, None, None
        raise
    production = mlflow.sklearn.load_model(f"models:/{name}@{PRODUCTION}")
    missing = [str(column) for column in production.feature_names_in_ if column not in test.columns]
    if missing or target.name not in test.columns:
        lacking = ", ".join(missing) or target.name
        return str(version.version), None, f"was trained on inputs the data no longer has ({lacking})"
    return str(version.version), regression_metrics(test[target.name], predict(production, test, target)), None


@dataclass(frozen=True)
class Registration:
    run_id: str
    experiment_id: str
    model_name: str
    version: str
    verdict: GateVerdict
    tracking_uri: str


def track_and_register(
    *,
    params: Params,
    pipeline: Pipeline,
    inputs: Inputs,
    test: pd.DataFrame,
    evaluation: dict[str, Any],
    metadata: dict[str, Any],
    lineage: dict[str, Any],
    artifacts: list[Path],
    local_dir: Path,
) -> Registration:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    experiment_id = use_tracking(local_dir, params.tracking.experiment)
    # It cannot find pip in a uv environment and says so on every run; the requirements are given explicitly.
    logging.getLogger("mlflow.utils.environment").setLevel(logging.ERROR)
    client = MlflowClient()
    name = params.tracking.registered_model
    target = inputs.target
    commit = lineage.get("git_commit") or "unknown"
    tags = {
        "git_commit": commit,
        "data_hash": lineage.get("data_hash") or "unknown",
        "model_type": params.train.model,
        # dvc.lock is read while `register` runs: its own entry, if any, is the previous run's.
        **{f"dvc_stage.{s}": digest for s, digest in lineage.get("stage_hashes", {}).items() if s != "register"},
    }
    example = test[list(inputs.names)].head(5)
    with warnings.catch_warnings():
        # The inputs are integers on purpose: the service rejects missing values instead of encoding them.
        warnings.filterwarnings("ignore", message=".*Integer columns in Python cannot represent missing values")
        signature = infer_signature(example, predict(pipeline, example, target).to_numpy())
    with mlflow.start_run(run_name=f"{params.train.model}-{commit[:7]}", tags=tags) as run:
        mlflow.log_params(flat_params(params))
        mlflow.log_metrics(_flat_metrics(evaluation, metadata))
        for path in artifacts:  # before the model version exists, so a missing file registers nothing
            mlflow.log_artifact(str(path), artifact_path="reports")
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            signature=signature,
            input_example=example,
            serialization_format="skops",
            skops_trusted_types=_trusted_types(pipeline),
            pip_requirements=[f"scikit-learn=={metadata['libraries']['scikit-learn']}"],
            registered_model_name=name,
        )
        version = str(info.registered_model_version)
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
        production_version, production, incomparable = production_metrics(client, name, test, target)
        verdict = judge(
            params.gate, version, evaluation["model"], production_version, production, incomparable=incomparable
        )
        client.set_model_version_tag(name, version, "gate", "eligible" if verdict.eligible else "rejected")
        client.set_registered_model_alias(name, CANDIDATE, version)  # only once it carries its verdict
        mlflow.log_dict(verdict.to_dict(), "reports/gate.json")
    return Registration(run.info.run_id, experiment_id, name, version, verdict, mlflow.get_tracking_uri())


def _flat_metrics(evaluation: dict[str, Any], metadata: dict[str, Any]) -> dict[str, float]:
    flat = {f"test_{k}": v for k, v in evaluation["model"].items()}
    flat |= {f"baseline_{k}": v for k, v in evaluation["baseline"].items()}
    flat |= {f"validation_{k}": v for k, v in metadata["metrics"]["validation"].items()}
    flat["rmse_improvement_over_baseline"] = evaluation["rmse_improvement_over_baseline"]
    return flat


class GateRefusedError(Exception):
    """The version was not judged eligible by the quality gate."""


def promote(local_dir: Path, params: Params, version: str, force: bool = False, alias: str = PRODUCTION) -> None:
    """Point `alias` (production by default) at a registered version the gate judged eligible."""
    from mlflow import MlflowClient

    use_tracking(local_dir, params.tracking.experiment)
    client = MlflowClient()
    found = client.get_model_version(params.tracking.registered_model, version)  # fails clearly if missing
    verdict = found.tags.get("gate", "never judged")
    if verdict != "eligible" and not force:
        raise GateRefusedError(
            f"version {version} is not eligible for promotion (gate: {verdict}); "
            "its run's reports/gate.json says why. Use --force to promote it anyway."
        )
    client.set_registered_model_alias(params.tracking.registered_model, alias, version)


def render_gate_markdown(registration: Registration) -> str:
    verdict = registration.verdict
    word = "ELIGIBLE for promotion" if verdict.eligible else "REJECTED: not eligible for promotion"
    rows = [
        f"# Quality gate: {word}",
        "",
        f"Model `{registration.model_name}` version {verdict.candidate_version} (alias `{CANDIDATE}`), "
        f"run `{registration.run_id}`.",
        "",
        f"{verdict.reason}.",
        "",
        f"| | {verdict.metric} |",
        "| --- | ---: |",
        f"| candidate v{verdict.candidate_version} | {verdict.candidate_value:.3f} |",
    ]
    if verdict.production_version is not None and verdict.production_value is not None:
        rows.append(f"| production v{verdict.production_version} (same test rows) | {verdict.production_value:.3f} |")
        rows.append(f"| largest allowed (+{verdict.tolerance:.1%}) | {verdict.allowed_value:.3f} |")
    return "\n".join(rows) + "\n"


def save_gate(
    registration: Registration, json_path: Path, markdown_path: Path, model_trained_at: str | None = None
) -> None:
    """Write the verdict; `model_trained_at` ties it to the model it judged (see `metadata.json`)."""
    record = {
        "eligible": registration.verdict.eligible,
        "model_name": registration.model_name,
        "version": registration.version,
        "run_id": registration.run_id,
        "experiment_id": registration.experiment_id,
        "tracking_uri": registration.tracking_uri,
        "verdict": registration.verdict.to_dict(),
        "model_trained_at": model_trained_at,
    }
    atomic.write_json(json_path, record)
    atomic.write_text(markdown_path, render_gate_markdown(registration))
