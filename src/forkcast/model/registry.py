"""Track a training run in MLflow, register the served model, and gate it (forkcast.model.gate) against the
baseline, production and the recent production releases.

Default tracking is a local SQLite store under `.mlflow/` (never committed);
`MLFLOW_TRACKING_URI` switches to a server. mlflow is imported inside the functions
that need it, so the CLI stays fast.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from sklearn.pipeline import Pipeline

from forkcast import atomic
from forkcast.config import Params
from forkcast.data.declaration import Inputs
from forkcast.model.backtest import Fold
from forkcast.model.estimator import predict
from forkcast.model.gate import GateVerdict, Released, Scored, judge, render_markdown, score_released

if TYPE_CHECKING:
    from mlflow import MlflowClient

CANDIDATE = "candidate"
PRODUCTION = "production"


def tracking_uri(local_dir: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(local_dir / 'mlflow.db').resolve()}"


def is_local(uri: str) -> bool:
    return uri.startswith("sqlite:")


# Per request: 10 s to answer, 2 retries 1 s and 2 s apart; a dead server fails a call in ~3 s, a hung one in ~33 s.
TRACKING_LIMITS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}


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
    # Downloads of a released model's metadata would draw progress bars into the stage's log.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # mlflow waits 120 s per request and retries 7 times with backoff: a server that dies or hangs after the check
    # above would hold `register` for many minutes. Bounded here (each variable can still be set):
    for name, value in TRACKING_LIMITS.items():
        os.environ.setdefault(name, value)
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


def flat_params(params: Params) -> dict[str, Any]:
    hyperparameters = {f"{params.train.model}.{k}": v for k, v in params.train.hyperparameters().items()}
    return {
        "model": params.train.model,
        "seed": params.train.seed,
        "split.validation_fraction": params.split.validation_fraction,
        "split.test_fraction": params.split.test_fraction,
        "train.refit_on_all": params.train.refit_on_all,
        "backtest.folds": params.backtest.folds,
        "backtest.fold_cycles": params.backtest.fold_cycles,
        "gate.metric": params.gate.metric,
        "gate.tolerance": params.gate.tolerance,
        "gate.min_improvement_over_baseline": params.gate.min_improvement_over_baseline,
        "gate.releases_compared": params.gate.releases_compared,
        **hyperparameters,
    }


def trusted_types(pipeline: Pipeline) -> list[str]:
    """The scikit-learn types skops needs to be told about to load this pipeline again."""
    import skops.io

    untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(pipeline))
    foreign = [name for name in untrusted if not name.startswith("sklearn.")]
    if foreign:
        raise TypeError(f"the pipeline holds types from outside scikit-learn: {foreign}")
    return list(untrusted)


RELEASED_AT = "released_at"  # tag of a version production has served, and since when
MODEL_DIGEST = "model_digest"  # tag: what is served (the ONNX bytes), so the same model is one version


def model_digest(onnx: bytes) -> str:
    return hashlib.sha256(onnx).hexdigest()[:20]


def all_versions(client: MlflowClient, name: str) -> list[Any]:
    from mlflow.exceptions import MlflowException

    try:
        return list(client.search_model_versions(f"name = '{name}'"))
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise


def version_with_digest(client: MlflowClient, name: str, digest: str) -> str | None:
    """The registered version of exactly this model, if a run registered it before."""
    same = [int(v.version) for v in all_versions(client, name) if (v.tags or {}).get(MODEL_DIGEST) == digest]
    return str(min(same)) if same else None


def _released(client: MlflowClient, name: str, version: str) -> Released | str:
    """A registered version's metadata.json (logged with its run), or why it cannot be read."""
    import mlflow
    from mlflow.exceptions import MlflowException

    found = client.get_model_version(name, version)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=str(found.run_id), artifact_path="reports/metadata.json", dst_path=scratch
            )
            metadata = atomic.read_json(Path(path))
        except (MlflowException, OSError, ValueError) as exc:
            return f"has no readable metadata.json in its run ({type(exc).__name__})"
    return Released(str(version), metadata) if isinstance(metadata, dict) else "has a metadata.json that is no mapping"


def production_version(client: MlflowClient, name: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, PRODUCTION).version)
    except MlflowException as exc:
        # Only a missing alias (or model) means "no production yet"; any other error must not open the gate.
        if exc.error_code in {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"}:
            return None
        raise


def recent_releases(client: MlflowClient, name: str, count: int) -> list[str]:
    """The versions production served most recently (newest first), as `promote` tagged them."""
    released = [v for v in all_versions(client, name) if RELEASED_AT in (v.tags or {})]
    released.sort(key=lambda v: (v.tags[RELEASED_AT], int(v.version)), reverse=True)
    return [str(v.version) for v in released[:count]]


def gate_verdict(
    client: MlflowClient, params: Params, candidate_version: str, backtest: dict[str, Any], *, data: pd.DataFrame,
    inputs: Inputs,
) -> GateVerdict:  # fmt: skip
    """Score production and the recent production releases on the candidate's backtest folds, then judge."""
    name, metric = params.tracking.registered_model, params.gate.metric
    folds = [Fold(pd.Timestamp(f["start"]), pd.Timestamp(f["end"])) for f in backtest["folds"]]
    candidate_values = [f["model"][metric] for f in backtest["folds"]]
    retrained: dict[str, list[float]] = {}
    scores: dict[str, Scored | str] = {}

    def score(version: str) -> Scored | str:
        if version not in scores:
            released = _released(client, name, version)
            scores[version] = released if isinstance(released, str) else score_released(
                released, folds, data, inputs, settings=params.train, candidate_values=candidate_values, metric=metric,
                retrained=retrained,
            )  # fmt: skip
        return scores[version]

    current = production_version(client, name)
    production = (current, score(current)) if current is not None else None
    history = [(version, score(version)) for version in recent_releases(client, name, params.gate.releases_compared)]
    verdict = judge(params.gate, candidate_version, backtest, production, history)
    if candidate_version == current:  # the same bytes as production: promoting it would change nothing
        note = f"the candidate is production's own model v{current} (the same ONNX bytes): nothing new to release"
        verdict = replace(verdict, unchanged=True, notes=(*verdict.notes, note), reason=f"{verdict.reason}; {note}")
    return verdict


@dataclass(frozen=True)
class Registration:
    run_id: str
    experiment_id: str
    model_name: str
    version: str
    verdict: GateVerdict
    tracking_uri: str
    closed_run: str | None = None  # an earlier register's run, left RUNNING by a server that stopped answering


def close_abandoned_run(client: MlflowClient, marker: Path) -> str | None:
    """Mark FAILED the run an earlier `register` left open on this tracking server when it stopped answering
    mid-run (mlflow could not be told then). `marker` maps each server to its open run; this server's entry goes
    once the run is resolved. Returns the run's id if it was still RUNNING."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    left = atomic.read_json(marker) if marker.exists() else {}
    run_id = left.get(uri)
    if run_id is None:
        return None
    try:
        status = client.get_run(run_id).info.status
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise  # the server failed again: the entry stays for the next run
        status = "DELETED"
    closed = None
    if status == "RUNNING":
        client.set_tag(run_id, "forkcast.failure", "the tracking server stopped answering during `register`")
        client.set_terminated(run_id, "FAILED")
        closed = run_id
    forget_open_run(marker, uri)
    return closed


def remember_open_run(marker: Path, uri: str, run_id: str) -> None:
    left = atomic.read_json(marker) if marker.exists() else {}
    atomic.write_json(marker, {**left, uri: run_id})


def forget_open_run(marker: Path, uri: str) -> None:
    left = atomic.read_json(marker) if marker.exists() else {}
    left.pop(uri, None)
    if left:
        atomic.write_json(marker, left)
    else:
        marker.unlink(missing_ok=True)


def track_and_register(
    *,
    params: Params,
    pipeline: Pipeline,
    inputs: Inputs,
    data: pd.DataFrame,
    backtest: dict[str, Any],
    evaluation: dict[str, Any],
    metadata: dict[str, Any],
    lineage: dict[str, Any],
    artifacts: list[Path],
    local_dir: Path,
    onnx: bytes,
    open_run: Path | None = None,
) -> Registration:
    """Log the run; register the served model as a new version, or find the version that holds these very bytes
    (a retrain to the same model is the same version, so its bento and image keep their tag); judge it."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    experiment_id = use_tracking(local_dir, params.tracking.experiment)
    # It cannot find pip in a uv environment and says so on every run; the requirements are given explicitly.
    logging.getLogger("mlflow.utils.environment").setLevel(logging.ERROR)
    client = MlflowClient()
    closed = close_abandoned_run(client, open_run) if open_run else None
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
    example = data[list(inputs.names)].tail(5)
    with warnings.catch_warnings():
        # The inputs are integers on purpose: the service rejects missing values instead of encoding them.
        warnings.filterwarnings("ignore", message=".*Integer columns in Python cannot represent missing values")
        signature = infer_signature(example, predict(pipeline, example, target).to_numpy())
    with mlflow.start_run(run_name=f"{params.train.model}-{commit[:7]}", tags=tags) as run:
        if open_run:  # forgotten once the run ends; still there, it names a run the next register marks FAILED
            remember_open_run(open_run, mlflow.get_tracking_uri(), run.info.run_id)
        mlflow.log_params(flat_params(params))
        mlflow.log_metrics(_flat_metrics(evaluation, metadata, backtest))
        for path in artifacts:  # before the model version exists, so a missing file registers nothing
            mlflow.log_artifact(str(path), artifact_path="reports")
        digest = model_digest(onnx)
        existing = version_with_digest(client, name, digest)
        if existing is not None:
            version = existing
            mlflow.set_tag("registered_as", f"{name} v{version} (the same model as before: not registered again)")
        else:
            version = _log_model(pipeline, metadata, name, signature=signature, example=example)
            for key, value in {**tags, MODEL_DIGEST: digest}.items():
                client.set_model_version_tag(name, version, key, value)
        verdict = gate_verdict(client, params, version, backtest, data=data, inputs=inputs)
        if not verdict.unchanged:  # production's own tag stays as its release found it
            client.set_model_version_tag(name, version, "gate", "eligible" if verdict.eligible else "rejected")
        client.set_registered_model_alias(name, CANDIDATE, version)  # only once it carries its verdict
        mlflow.log_dict(verdict.to_dict(), "reports/gate.json")
    if open_run:
        forget_open_run(open_run, mlflow.get_tracking_uri())
    return Registration(run.info.run_id, experiment_id, name, version, verdict, mlflow.get_tracking_uri(), closed)


def _log_model(pipeline: Pipeline, metadata: dict[str, Any], name: str, **described: Any) -> str:
    """Log the pipeline (skops, scikit-learn types only) in the active run as a new version of `name`."""
    import mlflow

    info = mlflow.sklearn.log_model(
        pipeline,
        name="model",
        signature=described.get("signature"),
        input_example=described.get("example"),
        serialization_format="skops",
        skops_trusted_types=trusted_types(pipeline),
        pip_requirements=[f"scikit-learn=={metadata['libraries']['scikit-learn']}"],
        registered_model_name=name,
    )
    return str(info.registered_model_version)


def register_released(
    local_dir: Path, params: Params, *, pipeline: Pipeline, metadata: dict[str, Any], onnx: bytes, release: str,
    released_at: str, production: bool, metadata_file: Path,
) -> tuple[str, bool]:  # fmt: skip
    """A model production served (a GitHub release of it) as a registered version, tagged as released when it was,
    and aliased production when it is; the version and whether the store already held these bytes."""
    import mlflow
    from mlflow import MlflowClient

    use_tracking(local_dir, params.tracking.experiment)
    logging.getLogger("mlflow.utils.environment").setLevel(logging.ERROR)
    client, name, digest = MlflowClient(), params.tracking.registered_model, model_digest(onnx)
    version = version_with_digest(client, name, digest)
    reused = version is not None
    if version is None:
        with mlflow.start_run(run_name=f"released {release}", tags={"github_release": release}):
            mlflow.log_artifact(str(metadata_file), artifact_path="reports")  # what the gate reads of it
            version = _log_model(pipeline, metadata, name)
    tags = {
        "git_commit": metadata.get("git_commit") or "unknown",
        "data_hash": metadata.get("data_hash") or "unknown",
        "model_type": metadata.get("model_type", "unknown"),
        "github_release": release,
        MODEL_DIGEST: digest,
        RELEASED_AT: released_at,
        "gate": "eligible",  # it was released: the gate passed it then
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if production:
        client.set_registered_model_alias(name, PRODUCTION, version)
    return version, reused


def _flat_metrics(evaluation: dict[str, Any], metadata: dict[str, Any], backtest: dict[str, Any]) -> dict[str, float]:
    flat = {f"test_{k}": v for k, v in evaluation["model"].items()}
    flat |= {f"baseline_{k}": v for k, v in evaluation["baseline"].items()}
    validation = (metadata.get("evaluated_model") or metadata)["metrics"]["validation"]
    flat |= {f"validation_{k}": v for k, v in validation.items()}
    flat["rmse_improvement_over_baseline"] = evaluation["rmse_improvement_over_baseline"]
    for who in ("model", "baseline"):
        for name, summary in backtest[who].items():
            flat |= {f"backtest_{who}_{name}_mean": summary["mean"], f"backtest_{who}_{name}_std": summary["std"]}
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
    if alias == PRODUCTION:  # the gate's memory: later candidates must not fall far behind the recent releases
        released_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        client.set_model_version_tag(params.tracking.registered_model, version, RELEASED_AT, released_at)


def render_gate_markdown(registration: Registration, unit: str = "") -> str:
    detail = (
        f"Model `{registration.model_name}` version {registration.version} (alias `{CANDIDATE}`), "
        f"run `{registration.run_id}`."
    )
    return render_markdown(registration.verdict, detail, unit)


def save_gate(
    registration: Registration,
    json_path: Path,
    markdown_path: Path,
    model_trained_at: str | None = None,
    unit: str = "",
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
    atomic.write_text(markdown_path, render_gate_markdown(registration, unit))
