"""`forkcast replay` against the real served bento: what it sends is logged once, with its true counts as labels."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forkcast.cli import main
from forkcast.config import Params
from forkcast.data.declaration import load
from forkcast.data.prepare import build_features, load_raw
from forkcast.monitoring import replay
from forkcast.serving import inference_log
from forkcast.serving.inference_log import InferenceLog

from ..conftest import ROOT, Built, free_port
from ..serving.test_serving import Server, serve

JULY_1 = 182  # the data's `day` number of 2011-07-01 (day 1 is 2011-01-01)
JULY = ["--from", "2011-07-01", "--to", "2011-07-31"]


@pytest.fixture(scope="module")
def server(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = serve(built.tag, tmp_path_factory.mktemp("replay-serve"))
    yield running
    running.stop()


def true_counts(data_file: Path, days: range) -> pd.DataFrame:
    """The raw data's counts of `days`, keyed by (weekday, hr): unique within one week."""
    raw = pd.read_csv(data_file, skipinitialspace=True)
    rows = raw[raw["day"].isin(days)].astype({"hr": int, "weekday": int})
    counts = rows[["weekday", "hr", "bikers"]]
    assert not counts.duplicated(["weekday", "hr"]).any()
    return counts


def test_batches_cover_every_record_once_in_order() -> None:
    assert replay.batches(50, 24) == [slice(0, 24), slice(24, 48), slice(48, 50)]
    assert replay.batches(48, 24) == [slice(0, 24), slice(24, 48)]
    assert replay.batches(0, 24) == []


@pytest.mark.slow
@pytest.mark.integration
def test_a_replayed_week_is_logged_once_per_hour_with_its_true_counts(
    server: Server, data_file: Path, params: Params, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = params.dataset
    hours = replay.select_rows(
        build_features(load_raw(data_file, dataset), dataset), dt.date(2011, 7, 4), dt.date(2011, 7, 10)
    )
    reports: list[tuple[int, int]] = []
    result = replay.replay(
        server.url,
        replay.to_records(hours, dataset.feature_names),
        hours["bikers"].astype(float).tolist(),
        24,
        progress=lambda rows, requests, seconds: reports.append((rows, requests)),
        progress_every=3,
    )
    assert result.stopped is None
    assert reports == [(72, 3), (144, 6)]
    assert (result.rows, result.requests) == (len(hours), 7) == (7 * 24, 7)
    labels_file = in_tmp / "labels.parquet"
    assert replay.append_labels(labels_file, result.labels) == 168

    args = ["replay", "--url", server.url, "--from", "2011-07-11", "--to", "2011-07-12", "--labels", str(labels_file)]
    assert main([*args, "--data", str(data_file)]) == 0  # a second replay appends
    out = capsys.readouterr().out
    assert "replayed 48 hours in 2 requests" in out
    assert f"labels: {labels_file} (216 rows in all)" in out

    server.stop()  # the workers flush their inference logs on the way out
    logged = inference_log.read(
        str(server.inference_log), schema=inference_log.log_schema(dataset.inputs())
    ).to_pandas()
    labels = pd.read_parquet(labels_file)
    keys = ["request_id", "position"]

    assert len(logged) == 216
    assert logged["request_id"].str.startswith(replay.REPLAY_REQUEST_PREFIX).all()
    assert not logged.duplicated(keys).any()
    assert (logged["model_version"] == "7").all()
    assert list(labels.columns) == ["request_id", "position", "actual"]
    pd.testing.assert_frame_equal(
        labels.head(168), result.labels.astype({"position": "int32"}), check_dtype=True
    )  # the first replay's labels are kept as they were
    assert set(map(tuple, labels[keys].to_numpy())) == set(map(tuple, logged[keys].to_numpy()))

    first = logged.merge(result.answers, on=keys, validate="one_to_one")
    assert len(first) == 168
    np.testing.assert_allclose(first["prediction_x"], first["prediction_y"], rtol=1e-6)  # log == the answers

    joined = logged.merge(labels, on=keys, validate="one_to_one")
    in_first = joined["request_id"].isin(set(result.answers["request_id"]))
    parts = ((joined[in_first], range(JULY_1 + 3, JULY_1 + 10)), (joined[~in_first], range(JULY_1 + 10, JULY_1 + 12)))
    for part, days in parts:
        expected = part.merge(true_counts(data_file, days), on=["weekday", "hr"])
        assert len(expected) == len(part) == 24 * len(days)
        np.testing.assert_array_equal(expected["actual"], expected["bikers"].astype(float))


DEAD = "http://127.0.0.1:1"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--from", "2011-07-10", "--to", "2011-07-01"], "--to 2011-07-01 is before --from 2011-07-10"),
        (["--from", "2010-12-25", "--to", "2011-01-05"], "--from 2010-12-25 is before the data begins"),
        (["--from", "2011-12-30", "--to", "2012-01-02"], "the data covers 2011-01-01..2011-12-31"),
        (["--from", "2011-02-30"], "--from must be a date YYYY-MM-DD, not '2011-02-30'"),
        (["--batch", "0", *JULY], "--batch must be between 1 and 1,000"),
        (["--batch", "1001", *JULY], "--batch must be between 1 and 1,000"),
        (["--env", "staging"], "give exactly one of --url and --env"),
        ([], "no model test period is recorded (run `dvc repro`): give --from and --to"),
    ],
)
def test_bad_input_is_a_usage_error_and_sends_and_writes_nothing(
    args: list[str], words: str, data_file: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # had anything been sent, this would be exit 1
    assert main(["replay", "--url", url, "--data", str(data_file), *args]) == 2
    assert words in capsys.readouterr().err
    assert not (in_tmp / "outputs").exists()


def test_a_range_without_hours_and_a_missing_deployment_are_usage_errors(
    data_file: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = pd.read_csv(data_file, skipinitialspace=True)
    gap = in_tmp / "gap.csv"
    raw[raw["day"] != JULY_1 + 3].to_csv(gap, index=False)  # no 2011-07-04
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["replay", "--url", url, "--data", str(gap), "--from", "2011-07-04", "--to", "2011-07-04"]) == 2
    assert "the data holds no rows from 2011-07-04 to 2011-07-04" in capsys.readouterr().err
    assert main(["replay", "--env", "production", "--data", str(data_file), *JULY]) == 2
    assert "nothing is deployed to production: run `forkcast deploy --env production`" in capsys.readouterr().err
    assert not (in_tmp / "outputs").exists()


def test_a_labels_file_that_is_not_one_is_left_alone(
    data_file: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = in_tmp / "notes.parquet"
    other.write_text("not parquet")
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["replay", "--url", url, "--data", str(data_file), "--labels", str(other), *JULY]) == 2
    assert "is not a labels file" in capsys.readouterr().err
    assert other.read_text() == "not parquet"


def test_nothing_deployed_at_the_url_writes_no_labels(
    data_file: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["replay", "--url", url, "--data", str(data_file), "--from", "2011-07-01", "--to", "2011-07-01"]) == 1
    assert f"nothing is deployed at {url}: run `forkcast deploy --env staging`" in capsys.readouterr().err
    assert not (in_tmp / "outputs").exists()


class _FailsAfterFirst(ThreadingHTTPServer):
    """Answers the first /predict like the service, and 500 to every one after it."""

    request_ids: list[str]


class _Handler(BaseHTTPRequestHandler):
    server: _FailsAfterFirst

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        request_id = self.headers["x-request-id"]
        self.server.request_ids.append(request_id)
        if len(self.server.request_ids) == 1:
            answer = {"request_id": request_id, "model_version": "0", "predictions": [1.0] * len(body["records"])}
            status, payload = 200, json.dumps(answer).encode()
        else:
            status, payload = 500, b"model crashed"
        self.send_response(status)
        self.send_header("content-type", "application/json" if status == 200 else "text/plain")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def failing_server() -> Iterator[_FailsAfterFirst]:
    http = _FailsAfterFirst(("127.0.0.1", 0), _Handler)
    http.request_ids = []
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield http
    http.shutdown()
    http.server_close()


def test_a_service_failing_midway_keeps_the_labels_of_what_it_answered(
    failing_server: _FailsAfterFirst, data_file: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{failing_server.server_address[1]}"
    args = ["replay", "--url", url, "--data", str(data_file), "--from", "2011-07-01", "--to", "2011-07-02"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "the service answered 500: model crashed" in err
    assert "24 of 48 hours were answered before it stopped" in err
    assert len(failing_server.request_ids) == 2  # it stopped at the failure

    labels = pd.read_parquet(in_tmp / "outputs" / "labels" / "adhoc.parquet")
    first_id = failing_server.request_ids[0]
    assert first_id.startswith(replay.REPLAY_REQUEST_PREFIX)
    assert (labels["request_id"] == first_id).all()
    assert labels["position"].tolist() == list(range(24))
    raw = pd.read_csv(data_file, skipinitialspace=True)
    july_1 = raw[raw["day"] == JULY_1].astype({"hr": int}).sort_values("hr")
    assert labels["actual"].tolist() == july_1["bikers"].astype(float).tolist()


def test_waiting_for_the_log_returns_once_every_request_is_written(tmp_path: Path) -> None:
    sink = tmp_path / "log"
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    inputs = load(ROOT / "dataset.yaml").inputs()
    log = InferenceLog(str(sink), inputs, environment="production", flush_seconds=3600)
    record = {f.name: [f.categories[0] if f.categories else f.min or 0] for f in inputs.features}
    log.append("replay-a", "1", record, np.array([1.0]))
    timer = threading.Timer(0.5, log.close)  # the service writes a moment later
    timer.start()
    try:
        assert replay.wait_until_logged(str(sink), {"replay-a"}, since, timeout=20, poll=0.1)
    finally:
        timer.join()
    assert not replay.wait_until_logged(str(sink), {"replay-a", "replay-never"}, since, timeout=0.3, poll=0.1)


def test_by_default_the_model_test_period_is_replayed_a_natural_cycle_per_request(
    failing_server: _FailsAfterFirst, data_file: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metadata = {"splits": {"test": {"start": "2011-12-30T00:00:00", "end": "2011-12-31T23:00:00"}}}
    (in_tmp / "outputs" / "served").mkdir(parents=True)
    (in_tmp / "outputs" / "served" / "metadata.json").write_text(json.dumps(metadata))
    url = f"http://127.0.0.1:{failing_server.server_address[1]}"
    assert main(["replay", "--url", url, "--data", str(data_file)]) == 1  # the second request gets a 500
    err = capsys.readouterr().err
    assert "replaying 48 hours (2011-12-30..2011-12-31)" in err  # the test period, from the model's metadata
    assert "in batches of 24" in err  # a day of hourly rows


TEST_PERIOD = (dt.date(2011, 11, 1), dt.date(2011, 12, 31))


def test_the_window_defaults_to_the_test_period_and_completes_a_single_date_from_it() -> None:
    assert replay.window(None, None, TEST_PERIOD) == TEST_PERIOD
    assert replay.window("2011-12-01", None, TEST_PERIOD) == (dt.date(2011, 12, 1), TEST_PERIOD[1])
    assert replay.window(None, "2011-11-07", TEST_PERIOD) == (TEST_PERIOD[0], dt.date(2011, 11, 7))
    assert replay.window("2011-01-01", "2011-01-07", None) == (dt.date(2011, 1, 1), dt.date(2011, 1, 7))


@pytest.mark.parametrize(
    ("start", "end", "named"),
    [("2012-01-05", None, "--from 2012-01-05"), (None, "2011-06-30", "--to 2011-06-30")],
)
def test_a_single_date_outside_the_test_period_asks_for_both(start: str | None, end: str | None, named: str) -> None:
    with pytest.raises(replay.ReplayInputError, match=f"{named} is outside the model's test period.*give both dates"):
        replay.window(start, end, TEST_PERIOD)


def test_without_a_test_period_both_dates_are_needed() -> None:
    with pytest.raises(replay.ReplayInputError, match="give --from and --to"):
        replay.window("2011-01-01", None, None)


def test_a_request_carries_a_natural_cycle_of_every_series() -> None:
    hours = pd.date_range("2012-01-01", periods=48, freq="h")
    one_series = pd.DataFrame({"timestamp": hours})
    three_stores = pd.DataFrame({"timestamp": hours.repeat(3)})
    assert replay.cycle_batch(one_series, 24) == 24
    assert replay.cycle_batch(three_stores, 24) == 72
    assert replay.cycle_batch(three_stores, 2_000) == replay.MAX_RECORDS  # never above what a request may hold
