"""The reference: the training data of the model an environment serves, with that model's predictions on it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pandas as pd

from forkcast import atomic, paths
from forkcast.data.declaration import Dataset, Inputs
from forkcast.monitoring.drift import DriftError
from forkcast.serving.contract import PREDICTION


@dataclass(frozen=True)
class ModelInfo:
    pipeline_file: Path
    inputs: Inputs  # the input contract it was trained with
    identity: dict[str, Any]  # source, model_version, data_hash, trained_at (and bento, when deployed)
    test_metrics: dict[str, float]  # rmse, mae on the model's test split, where known

    def check_declared(self, dataset: Dataset) -> None:
        """The model was trained on the features dataset.yaml declares now (the drift job reads the log by them)."""
        if self.inputs.names != dataset.feature_names:
            version = self.identity.get("model_version") or "?"
            raise DriftError(
                f"{self.identity['source']} serves model v{version} with the features {', '.join(self.inputs.names)}, "
                f"but dataset.yaml declares {', '.join(dataset.feature_names)}: compare on the commit that trained it, "
                "or retrain and deploy (`make run`)"
            )


def production_model(environment: str) -> ModelInfo:
    """The model the environment's local deployment serves, else the pipeline's model."""
    from forkcast.serving import deploy

    deployment = deploy.load(cast("deploy.Environment", environment))
    return _deployed_model(environment, deployment.bento) if deployment else _pipeline_model(environment)


def served_model(environment: str) -> tuple[ModelInfo | None, DriftError | None]:
    """`production_model`, or None and why there is none (reporting "no data yet" needs no model)."""
    try:
        return production_model(environment), None
    except DriftError as missing:
        return None, missing


def _deployed_model(environment: str, bento: str) -> ModelInfo:
    from forkcast.serving import build
    from forkcast.serving.predictor import INPUTS_FILE, PIPELINE_FILE

    build.use_project_store()
    import bentoml
    from bentoml.exceptions import BentoMLException

    try:
        description = build.describe(bento)
        model = bentoml.models.get(description.model)
    except (build.BuildError, BentoMLException) as exc:
        raise DriftError(f"{environment} serves {bento}, which cannot be loaded: {exc}") from exc
    metadata: dict[str, Any] = dict(model.info.metadata)
    metrics: dict[str, Any] = metadata.get("metrics") or {}
    identity = {
        "source": f"the {environment} deployment",
        "bento": bento,
        "model_version": description.labels.get("model_version"),
        "data_hash": description.labels.get("data_hash"),
        "trained_at": metadata.get("trained_at"),
        "fitted_on": metadata.get("fitted_on"),  # the rows it learned: the drift reference
    }
    test_metrics = {key: float(metrics[f"test_{key}"]) for key in ("rmse", "mae") if f"test_{key}" in metrics}
    inputs = Inputs.model_validate(atomic.read_json(Path(model.path) / INPUTS_FILE))
    return ModelInfo(Path(model.path) / PIPELINE_FILE, inputs, identity, test_metrics)


def _pipeline_model(environment: str) -> ModelInfo:
    if not paths.SERVED_PICKLE.exists():
        raise DriftError(
            f"no model to compare with: nothing is deployed to {environment} and {paths.SERVED_PICKLE} is missing. "
            "Run `dvc repro` (or deploy with `forkcast deploy`)"
        )
    metadata = _read_json(paths.SERVED_METADATA)
    gate = _read_json(paths.GATE_JSON)
    trained_at = metadata.get("trained_at")
    same_model = trained_at is not None and gate.get("model_trained_at") == trained_at
    identity = {
        "source": f"the pipeline's model {paths.SERVED_PICKLE} (nothing is deployed to {environment} here)",
        "model_version": str(gate["version"]) if same_model and "version" in gate else None,
        "data_hash": metadata.get("data_hash"),
        "trained_at": trained_at,
        "fitted_on": metadata.get("fitted_on"),
    }
    model_metrics = _read_json(paths.METRICS_JSON).get("model", {})
    test_metrics = {key: float(model_metrics[key]) for key in ("rmse", "mae") if key in model_metrics}
    if "inputs" not in metadata:
        raise DriftError(f"{paths.SERVED_METADATA} records no input contract: run `dvc repro`")
    return ModelInfo(paths.SERVED_PICKLE, Inputs.model_validate(metadata["inputs"]), identity, test_metrics)


def _read_json(path: Path) -> dict[str, Any]:
    data = atomic.read_json_if_exists(path)
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class Reference:
    frame: pd.DataFrame  # the features and the model's predictions
    model: ModelInfo
    identity: dict[str, Any]  # path, rows, time span, data hash where known
    warnings: tuple[str, ...]
    targets: pd.Series | None = None  # the true values, where the reference file has them (the naive baseline's)


def fitted_rows(model: ModelInfo) -> tuple[Path, pd.DataFrame]:
    """The prepared rows the model was fitted on: all of them for a model refit on every row (`train.refit_on_all`),
    the training split for one that was not (or whose metadata does not say)."""
    fitted = model.identity.get("fitted_on") or {}
    split = paths.prepared_split("train")
    if not fitted.get("start") or not fitted.get("end"):
        return split, _read_table(split)
    frames = [_read_table(paths.prepared_split(name)) for name in paths.SPLITS]
    rows = pd.concat(frames, ignore_index=True)
    inside = (rows["timestamp"] >= pd.Timestamp(fitted["start"])) & (rows["timestamp"] <= pd.Timestamp(fitted["end"]))
    return paths.PREPARED_DIR, rows[inside].reset_index(drop=True)


def _read_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DriftError(f"no reference data {path}: run `dvc repro` (or pass --reference PATH)")
    try:
        return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise DriftError(f"cannot read the reference data {path}: {exc}") from exc


def load_reference(path: Path | None, model: ModelInfo) -> Reference:
    """The training data (`path`, else the rows the model was fitted on) with the model's own (clipped)
    predictions on it."""
    import joblib

    path, frame = fitted_rows(model) if path is None else (path, _read_table(path))
    names = list(model.inputs.names)
    missing = [name for name in names if name not in frame.columns]
    if missing or frame.empty:
        problem = f"lacks the feature column(s) {', '.join(missing)}" if missing else "has no rows"
        raise DriftError(f"the reference data {path} {problem}: it must hold the model's training features")
    pipeline = joblib.load(model.pipeline_file)
    reference = frame[names].copy()
    reference[PREDICTION] = model.inputs.target.clip(pipeline.predict(reference))
    identity: dict[str, Any] = {"path": str(path), "rows": len(frame), "data_hash": _data_hash_of(path, frame)}
    if "timestamp" in frame.columns:
        identity |= {"start": str(frame["timestamp"].min()), "end": str(frame["timestamp"].max())}
    target = model.inputs.target.name
    targets = frame[target].astype("float64") if target in frame.columns else None
    return Reference(reference, model, identity, _reference_warnings(identity, model), targets)


def _data_hash_of(path: Path, frame: pd.DataFrame) -> str | None:
    """The data version of the pipeline's prepared rows, when the served model's metadata describes these very rows
    (the rows it was fitted on, or its training split)."""
    prepared = {paths.PREPARED_DIR.resolve(), paths.prepared_split("train").resolve()}
    if path.resolve() not in prepared or "timestamp" not in frame.columns:
        return None
    metadata = _read_json(paths.SERVED_METADATA)
    described = [metadata.get("fitted_on") or {}, (metadata.get("splits") or {}).get("train") or {}]
    start = frame["timestamp"].min().isoformat()
    matches = any(d.get("rows") == len(frame) and d.get("start") == start for d in described)
    return metadata.get("data_hash") if matches else None


def _reference_warnings(identity: dict[str, Any], model: ModelInfo) -> tuple[str, ...]:
    ours, theirs = identity["data_hash"], model.identity.get("data_hash")
    if ours and theirs and ours != theirs:
        version = model.identity.get("model_version") or "?"
        return (
            f"the reference is the prepared data {ours}, but model v{version} was trained on data "
            f"{theirs}: check that data out (`git checkout <its commit> data.dvc && dvc checkout && dvc repro`) "
            "or pass --reference",
        )
    if not ours:
        return ("the reference's data version is unknown: these are not the rows the pipeline's model metadata names",)
    return ()
