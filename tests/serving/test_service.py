"""The service in-process (its ASGI app): contract, no train/serve skew, lineage, inference log."""

from __future__ import annotations

import functools
import importlib
import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from forkcast.data.features import FEATURES
from forkcast.data.prepare import Splits
from forkcast.model.estimator import predict
from forkcast.model.train import TrainedModel
from forkcast.serving import build, inference_log
from forkcast.serving.contract import EXAMPLE_RECORD, MAX_RECORDS

from ..conftest import Built

MODEL_TAG_ENV = "FORKCAST_MODEL_TAG"


@functools.cache
def asgi_app(model: str) -> Any:
    """One app per session (bentoml registers its Prometheus metrics once per process), serving `model`."""
    sys.modules.pop("forkcast.serving.service", None)  # it reads the model's tag when imported
    os.environ[MODEL_TAG_ENV] = model
    try:
        service = importlib.import_module("forkcast.serving.service")
    finally:
        del os.environ[MODEL_TAG_ENV]
    return service.Forecaster.to_asgi()


def start(built: Built, log_dir: Path, monkeypatch: pytest.MonkeyPatch, backend: str = "onnx") -> TestClient:
    """A client whose `with` block starts a fresh service instance (it reads its settings then) and stops it."""
    monkeypatch.setenv("FORKCAST_INFERENCE_LOG", str(log_dir))
    monkeypatch.setenv("FORKCAST_ENVIRONMENT", "test")
    monkeypatch.setenv("FORKCAST_BACKEND", backend)
    return TestClient(asgi_app(build.describe(built.tag).model), raise_server_exceptions=False)


@pytest.fixture
def client(built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    with start(built, tmp_path / "log", monkeypatch) as client:
        yield client


def records_of(splits: Splits) -> list[dict[str, Any]]:
    return list(splits.test[list(FEATURES)].to_dict(orient="records"))


def serve_all(client: TestClient, records: list[dict[str, Any]]) -> np.ndarray:
    served: list[float] = []
    for start_at in range(0, len(records), MAX_RECORDS):
        response = client.post("/predict", json={"records": records[start_at : start_at + MAX_RECORDS]})
        assert response.status_code == 200, response.text
        served += response.json()["predictions"]
    return np.asarray(served)


def test_served_predictions_match_the_pipeline_on_the_whole_test_set(
    client: TestClient, trained: TrainedModel, splits: Splits, built: Built
) -> None:
    expected = predict(trained.pipeline, splits.test).to_numpy()
    served = serve_all(client, records_of(splits))
    assert client.post("/metadata", json={}).json()["backend"] == "onnx"
    assert len(served) == len(splits.test)
    assert np.max(np.abs(served - expected)) <= 0.01  # train.onnx_tolerance


def test_the_scikit_learn_fallback_gives_identical_predictions(
    built: Built, trained: TrainedModel, splits: Splits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with start(built, tmp_path / "log", monkeypatch, backend="scikit-learn") as client:
        assert client.post("/metadata", json={}).json()["backend"] == "scikit-learn"
        served = serve_all(client, records_of(splits))
    np.testing.assert_array_equal(served, predict(trained.pipeline, splits.test).to_numpy())


def test_metadata_carries_the_lineage_of_the_build(client: TestClient, built: Built) -> None:
    info = client.post("/metadata", json={}).json()
    for key in ("model_version", "run_id", "data_hash", "git_commit", "trained_at"):
        assert info[key] == built.lineage[key]
    assert info["bento_model"].endswith(built.tag.split(":")[1])
    assert info["metrics"] == built.lineage["metrics"]
    assert info["features"] == list(FEATURES)


def test_one_call_scores_one_or_many_records_in_order(client: TestClient) -> None:
    night, rush = {**EXAMPLE_RECORD, "hr": 3}, {**EXAMPLE_RECORD, "hr": 8}
    both = client.post("/predict", json={"records": [night, rush]}).json()["predictions"]
    alone = client.post("/predict", json={"records": [rush]}).json()["predictions"]
    assert len(both) == 2
    assert both[1] == pytest.approx(alone[0])
    assert both[0] < both[1]  # 3 am is quieter than the morning rush on a working day


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"records": [{**EXAMPLE_RECORD, "hr": 25}]}, "hr"),
        ({"records": [{**EXAMPLE_RECORD, "weathersit": "sunny"}]}, "weathersit"),
        ({"records": [{k: v for k, v in EXAMPLE_RECORD.items() if k != "temp"}]}, "temp"),
        ({"records": [{**EXAMPLE_RECORD, "casual": 3}]}, "casual"),
        ({"records": [{**EXAMPLE_RECORD, "month": "May"}]}, "month"),
        ({"records": []}, "records"),
        ({"records": [EXAMPLE_RECORD] * (MAX_RECORDS + 1)}, "records"),
        ({"rows": [EXAMPLE_RECORD]}, "records"),
        ([EXAMPLE_RECORD], ""),  # not an object: the body itself is wrong
    ],
)
def test_bad_requests_get_a_400_naming_the_field(client: TestClient, body: Any, field: str) -> None:
    response = client.post("/predict", json=body)
    assert response.status_code == 400
    locations = [[str(part) for part in error["loc"]] for error in response.json()["detail"]]
    assert any(location[-1:] == [field] if field else location == [] for location in locations), locations


def test_malformed_json_and_other_media_types_are_refused_not_crashed(client: TestClient) -> None:
    malformed = client.post("/predict", content=b'{"records": [', headers={"content-type": "application/json"})
    assert malformed.status_code == 400
    multipart = client.post("/predict", content=b"{}", headers={"content-type": "multipart/form-data"})
    assert multipart.status_code == 415
    assert multipart.json()["detail"][0]["loc"] == ["header", "content-type"]
    undecodable = client.post("/predict", content=b"{}", headers={"content-type": b"text/\xff"})  # type: ignore[dict-item]
    assert undecodable.status_code == 415


def test_a_caller_request_id_is_kept(client: TestClient) -> None:
    response = client.post("/predict", json={"records": [EXAMPLE_RECORD]}, headers={"x-request-id": "abc-123"})
    assert response.json()["request_id"] == "abc-123"
    assert response.headers["x-request-id"] == "abc-123"


def test_every_prediction_is_in_the_inference_log_after_shutdown(
    built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = [1, 3, 1, 10]
    with start(built, tmp_path / "log", monkeypatch) as client:
        answers = [
            client.post("/predict", json={"records": [{**EXAMPLE_RECORD, "hr": h} for h in range(n)]}).json()
            for n in sizes
        ]
        client.post("/predict", json={"records": []})  # rejected: not logged
    logged = inference_log.read(str(tmp_path / "log")).to_pandas()
    assert len(logged) == sum(sizes)
    assert set(logged["environment"]) == {"test"}
    assert set(logged["model_version"]) == {"7"}
    last = logged[logged["request_id"] == answers[-1]["request_id"]].sort_values("position")
    assert last["hr"].tolist() == list(range(10))
    np.testing.assert_allclose(last["prediction"], answers[-1]["predictions"], rtol=1e-6)


def test_a_long_lived_connection_is_asked_to_reconnect_now_and_then(client: TestClient) -> None:
    # The test client is one connection (earlier tests used it too): every 100th answer says `connection: close`.
    closing = [
        index for index in range(1, 251) if client.post("/metadata", json={}).headers.get("connection") == "close"
    ]
    assert len(closing) >= 2
    assert closing[0] <= 100
    assert all(later - earlier == 100 for earlier, later in itertools.pairwise(closing))
