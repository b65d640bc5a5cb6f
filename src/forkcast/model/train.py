"""The train stage: fit the pipeline on the training split (the model that is evaluated), export it to ONNX, check
the export, and write its metadata."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
from sklearn.pipeline import Pipeline

from forkcast import atomic
from forkcast.config import Params
from forkcast.data.declaration import Inputs
from forkcast.model import lineage
from forkcast.model.estimator import fit, predict
from forkcast.model.metrics import regression_metrics
from forkcast.model.onnx import onnx_gap, to_onnx_bytes


class OnnxMismatchError(Exception):
    """The ONNX export does not reproduce the scikit-learn predictions."""


@dataclass(frozen=True)
class TrainedModel:
    pipeline: Pipeline
    onnx: bytes
    metadata: dict[str, Any]


def train(params: Params, splits: dict[str, pd.DataFrame], inputs: Inputs, data_hash: str | None) -> TrainedModel:
    """Fit on the training split; the metadata carries the input contract (`inputs`) the service will enforce."""
    target = inputs.target
    pipeline = fit(params.train, splits["train"], inputs)
    validation = splits["validation"]
    validation_metrics = regression_metrics(validation[target.name], predict(pipeline, validation, target))
    onnx_model, gap = checked_onnx(pipeline, splits["test"], params.train.onnx_tolerance)
    metadata = model_metadata(params, pipeline, inputs, splits, data_hash=data_hash, gap=gap, fitted_on=splits["train"])
    return TrainedModel(pipeline, onnx_model, metadata | {"metrics": {"validation": validation_metrics}})


def checked_onnx(pipeline: Pipeline, rows: pd.DataFrame, tolerance: float) -> tuple[bytes, float]:
    """The ONNX export, refused unless it reproduces scikit-learn's predictions on `rows`."""
    onnx_model = to_onnx_bytes(pipeline)
    gap = onnx_gap(pipeline, onnx_model, rows)
    if gap > tolerance:
        raise OnnxMismatchError(
            f"ONNX predictions differ from scikit-learn by up to {gap:.3g} (|difference| / max(1, |prediction|)) on "
            f"the test set; train.onnx_tolerance is {tolerance:g}"
        )
    return onnx_model, gap


def model_metadata(
    params: Params, pipeline: Pipeline, inputs: Inputs, splits: dict[str, pd.DataFrame], *, data_hash: str | None,
    gap: float, fitted_on: pd.DataFrame,
) -> dict[str, Any]:  # fmt: skip
    return {
        "model_type": params.train.model,
        "estimator": type(pipeline[-1]).__name__,
        "hyperparameters": params.train.hyperparameters(),
        "seed": params.train.seed,
        "features": list(pipeline.feature_names_in_),
        "target": inputs.target.name,
        "inputs": inputs.model_dump(mode="json"),
        "splits": {name: _describe(frame) for name, frame in splits.items()},
        "fitted_on": _describe(fitted_on),
        "onnx_max_gap_on_test": gap,
        "data_hash": data_hash,
        "git_commit": lineage.git_commit(),
        "libraries": lineage.library_versions(),
        "trained_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _describe(frame: pd.DataFrame) -> dict[str, Any]:
    return {
        "rows": len(frame),
        "start": frame["timestamp"].min().isoformat() if len(frame) else None,
        "end": frame["timestamp"].max().isoformat() if len(frame) else None,
    }


def save(model: TrainedModel, pipeline_path: Path, onnx_path: Path, metadata_path: Path) -> None:
    atomic.write_atomic(pipeline_path, lambda tmp: joblib.dump(model.pipeline, tmp))
    atomic.write_atomic(onnx_path, lambda tmp: tmp.write_bytes(model.onnx))
    atomic.write_json(metadata_path, model.metadata)


def load(pipeline_path: Path, onnx_path: Path, metadata_path: Path) -> TrainedModel:
    return TrainedModel(load_pipeline(pipeline_path), onnx_path.read_bytes(), atomic.read_json(metadata_path))


def load_pipeline(path: Path) -> Pipeline:
    pipeline: Pipeline = joblib.load(path)
    return pipeline
