"""Shadow mode: a challenger scored beside the served model, logged with it, never answering and never failing a
request. The scorer in-process (a challenger that raises or hangs), then bentos with a challenger under a real
`bentoml serve`, against the same bento's model served alone."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from forkcast.cli import main
from forkcast.config import HistGradientBoostingParams, Params
from forkcast.data.prepare import Splits
from forkcast.model.estimator import predict
from forkcast.model.onnx import gap
from forkcast.model.train import TrainedModel, train
from forkcast.monitoring import replay
from forkcast.monitoring.drift.traffic import Window, read_traffic
from forkcast.serving import build, inference_log
from forkcast.serving.contract import CHALLENGER_PREDICTION, CHALLENGER_VERSION, SHADOW_MODEL_ENV
from forkcast.serving.inference_log import InferenceLog
from forkcast.serving.shadow import Shadow

from ..conftest import ROOT, Built, model_source
from .test_serving import Server, metrics, serve

CHALLENGER_VERSION_LABEL = "8"
SCORED, FAILED = 'forkcast_shadow_requests_total{outcome="scored"}', 'forkcast_shadow_requests_total{outcome="failed"}'


def weakened(params: Params, max_iter: int) -> Params:
    settings = params.train.model_copy(update={"hist_gradient_boosting": HistGradientBoostingParams(max_iter=max_iter)})
    return params.model_copy(update={"train": settings})


def columns_of(frame: pd.DataFrame, params: Params) -> dict[str, list[Any]]:
    return {name: frame[name].tolist() for name in params.dataset.feature_names}


# --- the scorer in-process ---------------------------------------------------------------------------------------


def test_a_challenger_that_raises_or_hangs_never_delays_a_request_and_every_request_is_logged_once(
    splits: Splits, params: Params, tmp_path: Path
) -> None:
    inputs = params.dataset.inputs()
    rows = splits.test.head(40)

    log = InferenceLog(str(tmp_path / "raises"), inputs, shadow=True)
    shadow = Shadow(lambda columns: columns["no such feature"], "8", log)  # type: ignore[arg-type,return-value]
    for number in range(20):
        shadow.submit(f"r{number}", "7", columns_of(rows.iloc[number : number + 2], params), np.ones(2))
    shadow.close()
    log.close()
    logged = inference_log.read(str(tmp_path / "raises"), schema=inference_log.log_schema(inputs, shadow=True))
    assert logged.num_rows == 40
    assert set(logged.column(CHALLENGER_VERSION).to_pylist()) == {"8"}
    assert logged.column(CHALLENGER_PREDICTION).null_count == 40
    assert (shadow.stats.failed, shadow.stats.scored) == (20, 0)
    assert "KeyError" in str(shadow.stats.last_error)

    release = threading.Event()
    log = InferenceLog(str(tmp_path / "hangs"), inputs, shadow=True)

    def hangs(columns: Any) -> np.ndarray:
        release.wait()
        return np.zeros(2)

    shadow = Shadow(hangs, "8", log, max_rows=10)
    waits = []
    for number in range(20):  # 2 records each: the first request is being scored, 5 wait, the rest are skipped
        started = time.perf_counter()
        shadow.submit(f"h{number}", "7", columns_of(rows.iloc[number : number + 2], params), np.ones(2))
        waits.append(time.perf_counter() - started)
    assert max(waits) < 1.0  # at once: the challenger still hangs (a request that waited for it would wait forever)
    shadow.close(timeout=0.5)  # still hung: what it holds is logged without it
    release.set()
    log.close()
    logged = inference_log.read(str(tmp_path / "hangs"), schema=inference_log.log_schema(inputs, shadow=True))
    assert sorted(logged.column("request_id").to_pylist()) == sorted(f"h{n}" for n in range(20) for _ in range(2))
    assert logged.column(CHALLENGER_PREDICTION).null_count == 40
    assert shadow.stats.skipped == 20


def test_a_slow_challenger_is_held_to_its_share_of_the_worker_and_the_rest_is_logged_without_it(
    splits: Splits, params: Params, tmp_path: Path
) -> None:
    def slow(columns: Any) -> np.ndarray:  # 20 ms of CPU per call, every 50 ms: far beyond a 2% budget
        deadline = time.thread_time() + 0.02
        while time.thread_time() < deadline:
            pass
        return np.zeros(len(next(iter(columns.values()))))

    log = InferenceLog(str(tmp_path / "slow"), params.dataset.inputs(), shadow=True)
    shadow = Shadow(slow, "8", log, interval=0.05, max_share=0.02, budget_seconds=0.2)
    columns = columns_of(splits.test.head(1), params)
    for number in range(100):  # 1.5 s of requests
        shadow.submit(f"s{number}", "7", columns, np.ones(1))
        time.sleep(0.015)
    shadow.close()
    log.close()
    assert shadow.stats.scored > 0
    assert shadow.stats.skipped > 0  # over budget, it shed load; under, it scored again
    assert shadow.stats.scored + shadow.stats.skipped == 100
    assert inference_log.read(str(tmp_path / "slow")).num_rows == 100  # every request logged once either way


# --- for real ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weak(splits: Splits, params: Params) -> TrainedModel:
    """A genuinely worse challenger: 5 boosting iterations instead of 100."""
    return train(weakened(params, 5), splits.as_dict(), params.dataset.inputs(), data_hash="abc.dir")


@pytest.fixture(scope="module")
def shadow_bento(
    built: Built, trained: TrainedModel, weak: TrainedModel, splits: Splits, params: Params,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:  # fmt: skip
    """The session's bento's model, with the weak one as its challenger."""
    champion = model_source(trained, params, built.lineage)
    challenger = model_source(weak, params, {**built.lineage, "model_version": CHALLENGER_VERSION_LABEL})
    golden = build.golden_cases(champion, splits.test, params.smoke.golden_cases)
    result = build.build(
        champion, golden, params, bentofile=ROOT / "bentofile.yaml", source_dir=ROOT / "src",
        output_dir=tmp_path_factory.mktemp("shadow-build"), challenger=challenger,
    )  # fmt: skip
    assert result.challenger_tag is not None
    return result.bento_tag


@pytest.fixture(scope="module")
def alone(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = serve(built.tag, tmp_path_factory.mktemp("alone"))
    yield running
    running.stop()


def send(url: str, rows: pd.DataFrame, params: Params) -> replay.ReplayResult:
    """A day of hours per request, and a burst of one-record requests from 8 clients at once."""
    records, actual = replay.to_records(rows, params.dataset.feature_names), rows[params.dataset.target].tolist()
    start = len(records) - 64
    days = replay.replay(url, records[:start], actual[:start], 24)
    with ThreadPoolExecutor(8) as pool:
        parts = range(start, len(records), 8)
        burst = list(pool.map(lambda n: replay.replay(url, records[n : n + 8], actual[n : n + 8], 1), parts))
    answers = pd.concat([days.answers, *(part.answers for part in burst)], ignore_index=True)
    return replay.ReplayResult(url, len(records), days.requests + sum(p.requests for p in burst), 0.0, answers)


@pytest.mark.slow
@pytest.mark.integration
def test_a_shadow_challenger_is_logged_beside_every_answer_and_changes_none(
    alone: Server, shadow_bento: str, weak: TrainedModel, splits: Splits, params: Params, in_tmp: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    challenger = build.describe(shadow_bento).challenger
    assert challenger is not None
    assert challenger.startswith("forkcast-challenger:v8-")
    rows = splits.test.head(14 * 24 + 64)  # two weeks of hours the two models never trained on
    shadowed = serve(shadow_bento, in_tmp / "server", **{SHADOW_MODEL_ENV: challenger})
    try:
        answered = send(shadowed.url, rows, params)
        assert httpx.post(f"{shadowed.url}/metadata", json={}).json()["shadow"]["model_version"] == "8"
        deadline = time.monotonic() + 20
        while metrics(shadowed.url).get(SCORED, 0) < answered.requests and time.monotonic() < deadline:
            time.sleep(0.2)
        assert metrics(shadowed.url).get(SCORED) == answered.requests
        assert metrics(shadowed.url).get(FAILED, 0) == 0
    finally:
        shadowed.stop()
    expected = send(alone.url, rows, params)
    assert answered.answers["prediction"].tolist() == expected.answers["prediction"].tolist()  # identical answers

    sink = str(in_tmp / "server" / "inference")
    logged = inference_log.read(sink, schema=inference_log.log_schema(params.dataset.inputs(), shadow=True)).to_pandas()
    assert len(logged) == len(rows)
    assert not logged.duplicated(["request_id", "position"]).any()
    assert set(logged[CHALLENGER_VERSION]) == {"8"}
    assert logged[CHALLENGER_PREDICTION].notna().all()
    # In the order sent (the answers follow the rows): the challenger's predictions are the weak model's own.
    in_order = answered.answers.merge(logged, on=["request_id", "position"], how="left", suffixes=("", "_logged"))
    expected_weak = predict(weak.pipeline, rows, params.dataset.inputs().target).to_numpy()
    assert gap(in_order[CHALLENGER_PREDICTION], expected_weak) <= params.train.onnx_tolerance
    # The drift job's reader sees the usual columns only.
    assert read_traffic(sink, Window.ending(None, 1), params.dataset.inputs()).rows == len(rows)

    labels = in_tmp / "labels.parquet"
    replay.append_labels(labels, answered.labels.iloc[: 14 * 24])  # the days' labels; the burst stays unlabelled
    (in_tmp / "outputs" / "evaluation").mkdir(parents=True)  # the backtest's spread: what the verdict is judged by
    shutil.copy(ROOT / "outputs" / "evaluation" / "backtest.json", in_tmp / "outputs" / "evaluation")
    capsys.readouterr()
    assert main(["compare", "--log", sink, "--labels", str(labels)]) == 0
    report = pd.read_json(in_tmp / "outputs" / "compare" / "compare.json", typ="series")
    assert report["verdict"]["winner"] == "champion"
    assert report["verdict"]["clear"]
    assert (report["champion"]["label"], report["challenger"]["label"]) == ("v7", "v8")
    assert report["rows"] == {"compared": len(rows), "labelled": 14 * 24, "without_challenger": 0}
    assert {key: len(values) for key, values in report["segments"].items()} == {"workingday": 2, "hr": 24}
    assert "backtest standard deviations" in capsys.readouterr().out
    assert (in_tmp / "outputs" / "compare" / "plot.svg").read_text().startswith("<svg")


@pytest.mark.slow
@pytest.mark.integration
def test_a_challenger_that_cannot_be_loaded_fails_no_request_and_is_counted(
    alone: Server, shadow_bento: str, splits: Splits, params: Params, in_tmp: Path
) -> None:
    import bentoml

    challenger = bentoml.models.get(str(build.describe(shadow_bento).challenger))
    broken = "forkcast-challenger:broken"
    with bentoml.models.create(broken, metadata={**challenger.info.metadata, "model_version": "9"}) as model:
        for name in ("model.onnx", "golden.parquet", "inputs.json"):
            shutil.copy(Path(challenger.path) / name, model.path)
        (Path(model.path) / "model.joblib").write_bytes(b"not a model: a damaged store")
    rows = splits.test.head(3 * 24 + 64)
    shadowed = serve(shadow_bento, in_tmp / "server", **{SHADOW_MODEL_ENV: broken})
    try:
        answered = send(shadowed.url, rows, params)
        shadow = httpx.post(f"{shadowed.url}/metadata", json={}).json()["shadow"]
        assert shadow["backend"] is None
        assert shadow["problem"]
        deadline = time.monotonic() + 20
        while metrics(shadowed.url).get(FAILED, 0) < answered.requests and time.monotonic() < deadline:
            time.sleep(0.2)
        assert metrics(shadowed.url).get(FAILED) == answered.requests
    finally:
        shadowed.stop()
    assert answered.stopped is None
    assert answered.answers["prediction"].tolist() == send(alone.url, rows, params).answers["prediction"].tolist()
    sink = str(in_tmp / "server" / "inference")
    logged = inference_log.read(sink, schema=inference_log.log_schema(params.dataset.inputs(), shadow=True)).to_pandas()
    assert len(logged) == len(rows)
    assert set(logged[CHALLENGER_VERSION]) == {"9"}
    assert logged[CHALLENGER_PREDICTION].isna().all()
    assert main(["compare", "--log", sink]) == 3  # nothing to compare: said, not a crash
