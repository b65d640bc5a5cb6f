"""Which backend scores: ONNX Runtime only where it reproduces the pipeline, scikit-learn otherwise."""

from __future__ import annotations

import logging
from pathlib import Path

import joblib
import numpy as np
import pytest

from forkcast.config import Params
from forkcast.data.prepare import Splits
from forkcast.model.estimator import predict
from forkcast.model.onnx import columns_of_frame
from forkcast.model.train import TrainedModel
from forkcast.serving import build, predictor


@pytest.fixture
def model_dir(trained: TrainedModel, splits: Splits, params: Params, tmp_path: Path) -> Path:
    joblib.dump(trained.pipeline, tmp_path / predictor.PIPELINE_FILE)
    (tmp_path / predictor.ONNX_FILE).write_bytes(trained.onnx)
    golden = build.golden_cases(trained.pipeline, splits.test, params.smoke.golden_cases)
    golden.to_parquet(tmp_path / predictor.GOLDEN_FILE)
    return tmp_path


def test_onnx_serves_when_it_matches_within_the_tolerance(model_dir: Path, splits: Splits) -> None:
    loaded = predictor.load(model_dir, onnx_tolerance=0.01)
    assert loaded.backend == "onnx"
    assert loaded.onnx_max_abs_difference is not None
    assert 0 < loaded.onnx_max_abs_difference <= 0.01
    served = loaded.predict(columns_of_frame(splits.test))
    expected = predict(loaded.pipeline, splits.test).to_numpy()
    assert np.max(np.abs(served - expected)) <= 0.01
    assert served.min() >= 0


def test_scikit_learn_serves_when_onnx_differs_by_more(model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="forkcast.serving.predictor"):
        loaded = predictor.load(model_dir, onnx_tolerance=1e-9)
    assert loaded.backend == "scikit-learn"
    assert "serving with scikit-learn" in caplog.text


def test_scikit_learn_serves_without_an_onnx_file_or_when_asked(model_dir: Path, splits: Splits) -> None:
    assert predictor.load(model_dir, onnx_tolerance=0.01, prefer_onnx=False).backend == "scikit-learn"
    (model_dir / predictor.ONNX_FILE).unlink()
    loaded = predictor.load(model_dir, onnx_tolerance=0.01)
    assert loaded.backend == "scikit-learn"
    served = loaded.predict(columns_of_frame(splits.test))
    np.testing.assert_array_equal(served, predict(loaded.pipeline, splits.test).to_numpy())
