"""The service in-process (its ASGI app): contract, no train/serve skew, lineage, inference log."""

from __future__ import annotations

import functools
import importlib
import itertools
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from forkcast.config import Params
from forkcast.data.prepare import Splits
from forkcast.model.estimator import predict
from forkcast.model.onnx import gap
from forkcast.model.train import TrainedModel
from forkcast.serving import build, inference_log
from forkcast.serving.contract import MAX_RECORDS, TOKEN_ENV, WORKERS_ENV, SettingError

from ..conftest import Built

MODEL_TAG_ENV = "FORKCAST_MODEL_TAG"


def import_service(model: str) -> Any:
    """The service module afresh, serving `model` (it reads the model's tag and its settings when imported)."""
    sys.modules.pop("forkcast.serving.service", None)
    os.environ[MODEL_TAG_ENV] = model
    try:
        return importlib.import_module("forkcast.serving.service")
    finally:
        del os.environ[MODEL_TAG_ENV]


@functools.cache
def service_module(model: str) -> Any:
    """One module per model and session."""
    return import_service(model)


@functools.cache
def asgi_app(model: str) -> Any:
    """One app per model and session, serving `model`."""
    return service_module(model).Forecaster.to_asgi()


def _forget_bentoml_metrics() -> None:
    """bentoml registers its request metrics in the process-wide Prometheus registry as an app starts; the app of
    another example's model, started later in this process, must be able to register them again (a server runs one
    app, so this is a test's concern only)."""
    from prometheus_client import REGISTRY

    for collector, names in list(REGISTRY._collector_to_names.items()):
        if any(name.startswith("bentoml_") for name in names):
            REGISTRY.unregister(collector)


def start(built: Built, log_dir: Path, monkeypatch: pytest.MonkeyPatch, backend: str = "onnx") -> TestClient:
    """A client whose `with` block starts a fresh service instance (it reads its settings then) and stops it."""
    _forget_bentoml_metrics()
    monkeypatch.setenv("FORKCAST_INFERENCE_LOG", str(log_dir))
    monkeypatch.setenv("FORKCAST_ENVIRONMENT", "test")
    monkeypatch.setenv("FORKCAST_BACKEND", backend)
    return TestClient(asgi_app(build.describe(built.tag).model), raise_server_exceptions=False)


@pytest.fixture
def client(built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    with start(built, tmp_path / "log", monkeypatch) as client:
        yield client


def records_of(splits: Splits, params: Params) -> list[dict[str, Any]]:
    return list(splits.test[list(params.dataset.feature_names)].to_dict(orient="records"))


@pytest.fixture
def record(splits: Splits, params: Params) -> dict[str, Any]:
    """A valid record: a real test row."""
    return records_of(splits, params)[0]


def serve_all(client: TestClient, records: list[dict[str, Any]]) -> np.ndarray:
    served: list[float] = []
    for start_at in range(0, len(records), MAX_RECORDS):
        response = client.post("/predict", json={"records": records[start_at : start_at + MAX_RECORDS]})
        assert response.status_code == 200, response.text
        served += response.json()["predictions"]
    return np.asarray(served)


@pytest.mark.datasets
class TestEveryDataset:
    def test_served_predictions_match_the_pipeline_on_the_whole_test_set(
        self, client: TestClient, trained: TrainedModel, splits: Splits, params: Params
    ) -> None:
        expected = predict(trained.pipeline, splits.test, params.dataset.inputs().target).to_numpy()
        served = serve_all(client, records_of(splits, params))
        assert client.post("/metadata", json={}).json()["backend"] == "onnx"
        assert len(served) == len(splits.test)
        assert gap(served, expected) <= params.train.onnx_tolerance

    def test_the_scikit_learn_fallback_gives_identical_predictions(
        self, built: Built, trained: TrainedModel, splits: Splits, params: Params, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:  # fmt: skip
        with start(built, tmp_path / "log", monkeypatch, backend="scikit-learn") as client:
            assert client.post("/metadata", json={}).json()["backend"] == "scikit-learn"
            served = serve_all(client, records_of(splits, params))
        expected = predict(trained.pipeline, splits.test, params.dataset.inputs().target).to_numpy()
        np.testing.assert_array_equal(served, expected)

    def test_metadata_carries_the_lineage_and_the_contract(
        self, client: TestClient, built: Built, params: Params
    ) -> None:
        info = client.post("/metadata", json={}).json()
        for key in ("model_version", "run_id", "data_hash", "git_commit", "trained_at"):
            assert info[key] == built.lineage[key]
        assert info["bento_model"].endswith(built.tag.split(":")[1])
        assert info["metrics"] == built.lineage["metrics"]
        dataset = params.dataset
        assert info["features"] == list(dataset.feature_names)
        assert (info["dataset"], info["target"], info["unit"]) == (dataset.name, dataset.target, dataset.unit)
        assert info["frequency"] == dataset.time.frequency.period
        assert info["inputs"]["features"][0]["name"] == dataset.feature_names[0]
        golden = json.loads(built.golden.read_text())
        assert info["example"] == golden["records"][0]  # a real, valid record to copy
        response = client.post("/predict", json={"records": [info["example"]]})
        assert response.status_code == 200

    def test_the_openapi_document_describes_every_field(self, client: TestClient, params: Params) -> None:
        document = client.get("/docs.json").json()
        text = str(document)
        for name in params.dataset.feature_names:
            assert f"'{name}'" in text

    def test_one_call_scores_many_records_in_order(self, client: TestClient, splits: Splits, params: Params) -> None:
        rows = records_of(splits, params)[:5]
        together = client.post("/predict", json={"records": rows}).json()["predictions"]
        alone = [client.post("/predict", json={"records": [row]}).json()["predictions"][0] for row in rows]
        assert together == pytest.approx(alone)

    def test_bad_requests_get_a_400_naming_the_field(
        self, client: TestClient, record: dict[str, Any], params: Params
    ) -> None:
        first = params.dataset.feature_names[0]
        leaking_or_target = (params.dataset.columns_with("leaking") or (params.dataset.target,))[0]
        cases: list[tuple[Any, str]] = [
            ({"records": [{k: v for k, v in record.items() if k != first}]}, first),
            ({"records": [{**record, leaking_or_target: 3}]}, leaking_or_target),
            ({"records": [{**record, first: "May"}]}, first),
            ({"records": []}, "records"),
            ({"records": [record] * (MAX_RECORDS + 1)}, "records"),
            ({"rows": [record]}, "records"),
            ([record], ""),  # not an object: the body itself is wrong
        ]
        for body, field in cases:
            response = client.post("/predict", json=body)
            assert response.status_code == 400, (body, response.text)
            locations = [[str(part) for part in error["loc"]] for error in response.json()["detail"]]
            assert any(location[-1:] == [field] if field else location == [] for location in locations), locations


@pytest.mark.bikes
def test_the_morning_rush_outdraws_3_am(client: TestClient, record: dict[str, Any]) -> None:
    weekday = {**record, "weekday": 3, "holiday": 0, "workingday": 1}
    night, rush = {**weekday, "hr": 3}, {**weekday, "hr": 8}
    both = client.post("/predict", json={"records": [night, rush]}).json()["predictions"]
    assert both[0] < both[1]


@pytest.mark.bikes
def test_bad_bike_fields_are_named(client: TestClient, record: dict[str, Any]) -> None:
    for change, field in (({"hr": 25}, "hr"), ({"weathersit": "sunny"}, "weathersit"), ({"month": "May"}, "month")):
        response = client.post("/predict", json={"records": [{**record, **change}]})
        assert response.status_code == 400
        assert [str(part) for part in response.json()["detail"][0]["loc"]] == ["records", "0", field]


def test_malformed_json_and_other_media_types_are_refused_not_crashed(client: TestClient) -> None:
    malformed = client.post("/predict", content=b'{"records": [', headers={"content-type": "application/json"})
    assert malformed.status_code == 400
    multipart = client.post("/predict", content=b"{}", headers={"content-type": "multipart/form-data"})
    assert multipart.status_code == 415
    assert multipart.json()["detail"][0]["loc"] == ["header", "content-type"]
    undecodable = client.post("/predict", content=b"{}", headers={"content-type": b"text/\xff"})  # type: ignore[dict-item]
    assert undecodable.status_code == 415


def test_a_caller_request_id_is_kept(client: TestClient, record: dict[str, Any]) -> None:
    response = client.post("/predict", json={"records": [record]}, headers={"x-request-id": "abc-123"})
    assert response.json()["request_id"] == "abc-123"
    assert response.headers["x-request-id"] == "abc-123"


@pytest.mark.parametrize(
    ("request_id", "why"),
    [("x" * 129, "129 bytes given"), ("x" * 500_000, "500,000 bytes given"), ("two words", "9 bytes given"), ("", "")],
)
def test_a_request_id_that_is_not_a_short_token_is_refused_before_any_work(
    client: TestClient, record: dict[str, Any], request_id: str, why: str
) -> None:
    """It would be written into every logged row of the request and echoed: a huge one multiplied memory."""
    response = client.post("/predict", json={"records": [record]}, headers={"x-request-id": request_id})
    if len(request_id) > 16 * 1024 - 200:
        assert response.status_code == 431  # all headers together are too large first
        assert response.json()["detail"][0]["loc"] == ["header"]
        return
    assert response.status_code == 400
    assert response.json()["detail"][0]["loc"] == ["header", "x-request-id"]
    assert why in response.json()["error"]
    assert "x-request-id" not in response.headers


def test_headers_larger_than_16_kib_in_all_are_refused_with_431(client: TestClient, record: dict[str, Any]) -> None:
    headers = {f"x-padding-{number}": "y" * 1_000 for number in range(20)}
    response = client.post("/predict", json={"records": [record]}, headers=headers)
    assert response.status_code == 431
    assert "at most 16,384 are read" in response.json()["error"]
    fine = client.post("/predict", json={"records": [record]}, headers={"x-padding": "y" * 1_000})
    assert fine.status_code == 200


@pytest.mark.datasets
def test_every_prediction_is_in_the_inference_log_after_shutdown(
    built: Built, splits: Splits, params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = [1, 3, 1, 10]
    rows = records_of(splits, params)
    with start(built, tmp_path / "log", monkeypatch) as client:
        answers = [client.post("/predict", json={"records": rows[:n]}).json() for n in sizes]
        client.post("/predict", json={"records": []})  # rejected: not logged
    schema = inference_log.log_schema(params.dataset.inputs())
    logged = inference_log.read(str(tmp_path / "log"), schema=schema).to_pandas()
    assert len(logged) == sum(sizes)
    assert set(logged["environment"]) == {"test"}
    assert set(logged["model_version"]) == {"7"}
    last = logged[logged["request_id"] == answers[-1]["request_id"]].sort_values("position")
    for feature in params.dataset.features:  # every feature, typed as declared
        expected = [row[feature.name] for row in rows[:10]]
        if feature.type == "float":
            np.testing.assert_allclose(last[feature.name], expected, rtol=1e-6)
        else:
            assert last[feature.name].tolist() == expected
    np.testing.assert_allclose(last["prediction"], answers[-1]["predictions"], rtol=1e-6)


def test_a_long_lived_connection_is_asked_to_reconnect_now_and_then(client: TestClient) -> None:
    # The test client is one connection (earlier tests used it too): every 100th answer says `connection: close`.
    closing = [
        index for index in range(1, 251) if client.post("/metadata", json={}).headers.get("connection") == "close"
    ]
    assert len(closing) >= 2
    assert closing[0] <= 100
    assert all(later - earlier == 100 for earlier, later in itertools.pairwise(closing))


TOKEN = "s3cret-Token_for.tests~"


async def answer_ok(scope: Any, receive: Any, send: Any) -> None:
    """The app behind the middleware: 200 to everything."""
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def guarded(built: Built, token: str | None) -> TestClient:
    """The bearer-token middleware alone, around an app that answers 200 to everything."""
    service = service_module(build.describe(built.tag).model)
    document = {"paths": {"/predict": {"post": {"responses": {}}}, "/readyz": {"get": {"responses": {}}}}}
    middleware = service.BearerToken(
        answer_ok, token=token, routes=["/predict", "/metadata"], document=lambda: document
    )
    return TestClient(middleware)


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401), ("", 401), (f"Bearer {TOKEN}x", 401), (f"Bearer {TOKEN[:-1]}", 401), (f"Basic {TOKEN}", 401),
        (TOKEN, 401), (f"Bearer  {TOKEN}", 401), (f"Bearer {TOKEN}", 200), (f"bearer {TOKEN}", 200),
    ],
)  # fmt: skip
def test_with_a_token_the_api_routes_need_it(built: Built, authorization: str | None, status: int) -> None:
    client = guarded(built, TOKEN)
    headers = {} if authorization is None else {"Authorization": authorization}
    for route in ("/predict", "/metadata", "/predict/"):
        response = client.post(route, json={}, headers=headers)
        assert response.status_code == status, (route, authorization)
    if status == 401:
        body = response.json()
        assert "Authorization: Bearer <token>" in body["error"]
        assert body["detail"][0]["loc"] == ["header", "authorization"]
        assert response.headers["www-authenticate"] == (
            "Bearer" if authorization is None else 'Bearer error="invalid_token"'
        )
        assert TOKEN not in response.text


def test_with_a_token_health_metrics_and_docs_stay_open_and_the_docs_declare_it(built: Built) -> None:
    client = guarded(built, TOKEN)
    for route in ("/readyz", "/livez", "/healthz", "/metrics", "/schema.json", "/"):
        assert client.get(route).status_code == 200, route
    document = client.get("/docs.json").json()
    assert document["components"]["securitySchemes"] == {
        "bearer": {"type": "http", "scheme": "bearer", "description": f"The service's {TOKEN_ENV}"}
    }
    assert document["paths"]["/predict"]["post"]["security"] == [{"bearer": []}]
    assert "401" in document["paths"]["/predict"]["post"]["responses"]
    assert document["paths"]["/readyz"] == {"get": {"responses": {}}}


@pytest.mark.parametrize("token", [None, ""])
def test_without_a_token_everything_is_open_and_the_docs_are_bentomls(built: Built, token: str | None) -> None:
    client = guarded(built, token)
    assert client.post("/predict", json={}).status_code == 200
    assert client.get("/docs.json").text == "ok"  # passed through to bentoml's own


def started_with(built: Built, monkeypatch: pytest.MonkeyPatch, **environ: str) -> Any:
    """The service module imported afresh, as a server starts, with `environ` (the session's module comes back)."""
    monkeypatch.delitem(sys.modules, "forkcast.serving.service", raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    return import_service(build.describe(built.tag).model)


def test_a_token_a_header_cannot_carry_fails_the_start_without_showing_it(
    built: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SettingError, match=f"{TOKEN_ENV} must be printable ASCII") as caught:
        started_with(built, monkeypatch, **{TOKEN_ENV: "two words"})
    assert "two words" not in str(caught.value)


def test_the_service_with_a_token_refuses_the_api_without_it_and_documents_the_scheme(
    built: Built, record: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole app in-process: the middleware is in place with the environment's token (a secret file's newline
    dropped), and /docs.json is bentoml's document with the scheme on the API's operations only."""
    service = started_with(built, monkeypatch, **{TOKEN_ENV: f"{TOKEN}\n"})
    _forget_bentoml_metrics()
    monkeypatch.setenv("FORKCAST_INFERENCE_LOG", str(tmp_path / "log"))
    with TestClient(service.Forecaster.to_asgi(), raise_server_exceptions=False) as client:
        assert client.post("/predict", json={"records": [record]}).status_code == 401
        assert client.post("/metadata", json={}).status_code == 401
        authorized = {"Authorization": f"Bearer {TOKEN}"}
        assert client.post("/predict", json={"records": [record]}, headers=authorized).status_code == 200
        assert client.post("/metadata", json={}, headers=authorized).status_code == 200
        assert client.get("/livez").status_code == client.get("/readyz").status_code == 200
        document = client.get("/docs.json").json()
    secured = {
        (path, method)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if operation.get("security") == [{"bearer": []}]
    }
    assert secured == {("/predict", "post"), ("/metadata", "post")}
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "Record" in str(document["components"]["schemas"])  # still bentoml's own document underneath


@pytest.mark.parametrize("workers", ["0", "-1", "abc", "1.5", ""])
def test_a_bad_worker_count_fails_the_start_naming_the_variable(
    built: Built, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    with pytest.raises(SettingError, match=f"{WORKERS_ENV}={workers!r} must be a positive whole number"):
        started_with(built, monkeypatch, **{WORKERS_ENV: workers})


@pytest.mark.parametrize(("workers", "expected"), [(None, 2), ("3", 3), ("1", 1)])
def test_the_worker_count_comes_from_the_environment(
    built: Built, monkeypatch: pytest.MonkeyPatch, workers: str | None, expected: int
) -> None:
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    service = started_with(built, monkeypatch, **({} if workers is None else {WORKERS_ENV: workers}))
    assert service.Forecaster.config["workers"] == expected
