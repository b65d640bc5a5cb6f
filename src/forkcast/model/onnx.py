"""The pipeline in ONNX: its export (one input per column), and the runner that training's check and the
service both feed the same way."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from forkcast.data.features import CATEGORICAL_FEATURES, FEATURES, NUMERIC_FEATURES

Columns = Mapping[str, Sequence[Any]]


def columns_of(records: Sequence[Any]) -> dict[str, list[Any]]:
    """Column lists from records with one attribute per feature (pydantic models)."""
    return {name: [getattr(record, name) for record in records] for name in FEATURES}


def columns_of_frame(frame: pd.DataFrame) -> dict[str, list[Any]]:
    return {name: frame[name].tolist() for name in FEATURES}


class OnnxModel:
    """An ONNX Runtime session over the exported pipeline (one input per column)."""

    def __init__(self, model: bytes) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # one thread per worker: workers are the parallelism
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def predict(self, columns: Columns) -> np.ndarray:
        feeds: dict[str, np.ndarray] = {
            name: np.asarray(columns[name], dtype=np.float32).reshape(-1, 1) for name in NUMERIC_FEATURES
        }
        for name in CATEGORICAL_FEATURES:
            feeds[name] = np.asarray(columns[name], dtype=object).reshape(-1, 1)
        return np.asarray(self._session.run(None, feeds)[0], dtype=np.float64).ravel()


@contextlib.contextmanager
def _integer_missing_value_flags() -> Iterator[None]:
    """skl2onnx 1.20 writes a boolean where the current onnx requires an int for
    HistGradientBoosting trees (`nodes_missing_value_tracks_true`); cast it while converting."""
    from skl2onnx.common import tree_ensemble

    original = tree_ensemble.add_node

    def add_node(*args: Any, nodes_missing_value_tracks_true: Any = 0, **kwargs: Any) -> Any:
        return original(*args, nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true), **kwargs)

    tree_ensemble.add_node = add_node
    try:
        yield
    finally:
        tree_ensemble.add_node = original


def to_onnx_bytes(pipeline: Pipeline) -> bytes:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    inputs = [(name, FloatTensorType([None, 1])) for name in NUMERIC_FEATURES]
    inputs += [(name, StringTensorType([None, 1])) for name in CATEGORICAL_FEATURES]
    with _integer_missing_value_flags():
        model = convert_sklearn(pipeline, initial_types=inputs)
    return bytes(model.SerializeToString())


def predict_onnx(model: bytes, frame: pd.DataFrame) -> np.ndarray:
    """ONNX Runtime's predictions (before clipping), fed exactly as the service feeds it."""
    return OnnxModel(model).predict(columns_of_frame(frame))


def max_abs_difference(pipeline: Pipeline, model: bytes, frame: pd.DataFrame) -> float:
    """Largest gap between scikit-learn and ONNX Runtime predictions (before clipping)."""
    expected = pipeline.predict(frame[list(FEATURES)])
    return float(np.max(np.abs(predict_onnx(model, frame) - expected))) if len(frame) else 0.0
