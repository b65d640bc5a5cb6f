"""The pipeline in ONNX: its export (one input per column), and the runner that training's check and the
service both feed the same way.

Nothing here names a feature: the export reads the pipeline's own columns (text ones become string inputs), and
the runner reads the ONNX graph's inputs, so both follow the declaration the model was trained from.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the service and the smoke test import this module without training's libraries
    import pandas as pd
    from sklearn.pipeline import Pipeline

Columns = Mapping[str, Sequence[Any]]


def columns_of_frame(frame: pd.DataFrame, names: Sequence[str]) -> dict[str, list[Any]]:
    return {name: frame[name].tolist() for name in names}


def categorical_columns(pipeline: Pipeline) -> list[str]:
    """The pipeline's one-hot encoded (text) columns, as its preprocessing step lists them."""
    return [
        str(column)
        for name, _, columns in pipeline.named_steps["preprocess"].transformers_
        if name == "categorical"
        for column in columns
    ]


class OnnxModel:
    """An ONNX Runtime session over the exported pipeline (one input per column)."""

    def __init__(self, model: bytes) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # one thread per worker: workers are the parallelism
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self._inputs = [
            (node.name, object if node.type == "tensor(string)" else np.float32) for node in self._session.get_inputs()
        ]

    @property
    def input_names(self) -> list[str]:
        return [name for name, _ in self._inputs]

    def predict(self, columns: Columns) -> np.ndarray:
        """Raw predictions (before any clipping) for the columns, one value per row."""
        feeds = {name: np.asarray(columns[name], dtype=kind).reshape(-1, 1) for name, kind in self._inputs}
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


ONNX_GRAPH_NAME = "forkcast"


def to_onnx_bytes(pipeline: Pipeline) -> bytes:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    text = set(categorical_columns(pipeline))
    inputs = [
        (str(name), StringTensorType([None, 1]) if name in text else FloatTensorType([None, 1]))
        for name in pipeline.feature_names_in_
    ]
    with _integer_missing_value_flags():
        # The same model must export to the same bytes, so the bento built from it gets the same tag: skl2onnx
        # draws a random graph name, and lists the opsets in an order that follows Python's hash seed.
        model = convert_sklearn(pipeline, initial_types=inputs, name=ONNX_GRAPH_NAME)
    opsets = sorted(model.opset_import, key=lambda opset: (opset.domain, opset.version))
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    return bytes(model.SerializeToString())


def predict_onnx(model: bytes, frame: pd.DataFrame) -> np.ndarray:
    """ONNX Runtime's predictions (before clipping), fed exactly as the service feeds it."""
    runner = OnnxModel(model)
    return runner.predict(columns_of_frame(frame, runner.input_names))


def gap(served: Any, expected: Any) -> float:
    """How far two predictions of the same rows are apart, at worst: |served - expected| / max(1, |expected|).

    An absolute difference below 1 and a relative one above: ONNX Runtime scores in float32, whose rounding grows
    with the values, so one tolerance fits a target counted in units and one counted in millions alike.
    """
    each = gaps(served, expected)
    return float(each.max()) if each.size else 0.0


def gaps(served: Any, expected: Any) -> np.ndarray:
    """`gap` of each prediction."""
    served, expected = np.asarray(served, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    result: np.ndarray = np.abs(served - expected) / np.maximum(1.0, np.abs(expected))
    return result


def onnx_gap(pipeline: Pipeline, model: bytes, frame: pd.DataFrame) -> float:
    """The gap between scikit-learn's and ONNX Runtime's predictions of `frame` (before clipping)."""
    expected = pipeline.predict(frame[list(pipeline.feature_names_in_)]) if len(frame) else []
    return gap(predict_onnx(model, frame), expected) if len(frame) else 0.0
