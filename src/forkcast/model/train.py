"""The train stage: fit the pipeline, export it to ONNX, and write its metadata."""

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

    onnx_model = to_onnx_bytes(pipeline)
    gap = onnx_gap(pipeline, onnx_model, splits["test"])
    if gap > params.train.onnx_tolerance:
        raise OnnxMismatchError(
            f"ONNX predictions differ from scikit-learn by up to {gap:.3g} (|difference| / max(1, |prediction|)) on "
            f"the test set; train.onnx_tolerance is {params.train.onnx_tolerance:g}"
        )
    metadata = {
        "model_type": params.train.model,
        "estimator": type(pipeline[-1]).__name__,
        "hyperparameters": params.train.hyperparameters(),
        "seed": params.train.seed,
        "features": list(pipeline.feature_names_in_),
        "target": target.name,
        "inputs": inputs.model_dump(mode="json"),
        "splits": {name: _describe(frame) for name, frame in splits.items()},
        "metrics": {"validation": validation_metrics},
        "onnx_max_gap_on_test": gap,
        "data_hash": data_hash,
        "git_commit": lineage.git_commit(),
        "libraries": lineage.library_versions(),
        "trained_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    return TrainedModel(pipeline, onnx_model, metadata)


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


def load_pipeline(path: Path) -> Pipeline:
    pipeline: Pipeline = joblib.load(path)
    return pipeline
