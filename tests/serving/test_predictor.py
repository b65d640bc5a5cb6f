"""Which backend scores: ONNX Runtime only where it reproduces the pipeline, scikit-learn otherwise."""

from __future__ import annotations

import logging
from pathlib import Path

import joblib
import numpy as np
import pytest

from forkcast.config import Params
from forkcast.data.declaration import Target
from forkcast.data.prepare import Splits
from forkcast.model.estimator import predict
from forkcast.model.onnx import columns_of_frame, gap
from forkcast.model.train import TrainedModel
from forkcast.serving import build, predictor

from ..conftest import model_source

pytestmark = pytest.mark.datasets


@pytest.fixture
def model_dir(trained: TrainedModel, splits: Splits, params: Params, tmp_path: Path) -> Path:
    joblib.dump(trained.pipeline, tmp_path / predictor.PIPELINE_FILE)
    (tmp_path / predictor.ONNX_FILE).write_bytes(trained.onnx)
    golden = build.golden_cases(model_source(trained, params, {}), splits.test, params.smoke.golden_cases)
    golden.to_parquet(tmp_path / predictor.GOLDEN_FILE)
    (tmp_path / predictor.INPUTS_FILE).write_text(params.dataset.inputs().model_dump_json())
    return tmp_path


def test_onnx_serves_when_it_matches_within_the_tolerance(model_dir: Path, splits: Splits, params: Params) -> None:
    tolerance = params.train.onnx_tolerance
    loaded = predictor.load(model_dir, _target(model_dir), onnx_tolerance=tolerance)
    assert loaded.backend == "onnx"
    assert loaded.onnx_max_gap is not None
    assert 0 < loaded.onnx_max_gap <= tolerance
    names = params.dataset.feature_names
    served = loaded.predict(columns_of_frame(splits.test, names))
    expected = predict(loaded.pipeline, splits.test, params.dataset.inputs().target).to_numpy()
    assert gap(served, expected) <= tolerance
    assert served.min() >= 0


def test_the_contract_and_an_example_come_from_the_model_directory(model_dir: Path, params: Params) -> None:
    contract = predictor.contract(model_dir)
    assert contract.inputs == params.dataset.inputs()
    assert list(contract.example) == list(params.dataset.feature_names)
    assert all(not hasattr(value, "item") for value in contract.example.values())  # plain JSON values


def test_scikit_learn_serves_when_onnx_differs_by_more(model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="forkcast.serving.predictor"):
        loaded = predictor.load(model_dir, _target(model_dir), onnx_tolerance=1e-9)
    assert loaded.backend == "scikit-learn"
    assert "serving with scikit-learn" in caplog.text


def test_scikit_learn_serves_without_an_onnx_file_or_when_asked(
    model_dir: Path, splits: Splits, params: Params
) -> None:
    pipeline_only = predictor.load(model_dir, _target(model_dir), onnx_tolerance=0.01, prefer_onnx=False)
    assert pipeline_only.backend == "scikit-learn"
    (model_dir / predictor.ONNX_FILE).unlink()
    loaded = predictor.load(model_dir, _target(model_dir), onnx_tolerance=0.01)
    assert loaded.backend == "scikit-learn"
    served = loaded.predict(columns_of_frame(splits.test, params.dataset.feature_names))
    expected = predict(loaded.pipeline, splits.test, params.dataset.inputs().target).to_numpy()
    np.testing.assert_array_equal(served, expected)


def _target(model_dir: Path) -> Target:
    return predictor.contract(model_dir).inputs.target
