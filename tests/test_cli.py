"""The `forkcast` command as users call it: exit codes, messages, and what it leaves on disk."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from forkcast.cli import main

from .conftest import BIN, tool_env


def test_help_lists_every_stage() -> None:
    result = subprocess.run(
        [str(BIN / "forkcast"), "--help"], capture_output=True, text=True, env=tool_env(), check=False
    )
    assert result.returncode == 0
    commands = ("validate", "prepare", "train", "evaluate", "register", "promote", "summary", "new-data")
    for command in (*commands, "build", "deploy", "smoke", "status", "undeploy"):
        assert command in result.stdout


def test_an_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trian"]) == 2
    assert "No such command 'trian'" in capsys.readouterr().err


def test_a_typo_in_params_fails_fast_naming_the_key(in_project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = in_project / "params.yaml"
    params.write_text(params.read_text().replace("  seed: 42", "  sed: 42"))
    assert main(["prepare"]) == 2
    error = capsys.readouterr().err
    assert "unknown key 'train.sed'" in error
    assert "seed" in error
    assert not (in_project / "outputs/prepared").exists()


def break_data(project: Path, edit: str) -> Path:
    data = project / "data" / "bikeshare_hourly.csv"
    table = pd.read_csv(data, dtype=str)
    match edit:
        case "missing column":
            table = table.drop(columns=["hum"])
        case "text in a numeric column":
            table.loc[10, "windspeed"] = "breezy"
        case "unknown weather":
            table.loc[10, "weathersit"] = "sandstorm"
        case "duplicated rows":
            table = pd.concat([table, table.iloc[[10]]])
        case "out of range":
            table.loc[10, "temp"] = "3.5"
    data.unlink()  # DVC links files from its cache: replace, never write through
    table.to_csv(data, index=False)
    return data


@pytest.mark.parametrize(
    ("edit", "failed_check"),
    [
        ("missing column", "hum.present"),
        ("text in a numeric column", "windspeed.dtype"),
        ("unknown weather", "weathersit.isin"),
        ("duplicated rows", "rows.one_per_period"),
        ("out of range", "temp.in_range"),
    ],
)
def test_broken_data_fails_validation_with_a_report(
    in_project: Path, capsys: pytest.CaptureFixture[str], edit: str, failed_check: str
) -> None:
    break_data(in_project, edit)
    assert main(["validate"]) == 1
    output = capsys.readouterr()
    assert f"FAILED {failed_check}" in output.err
    assert "data validation failed" in output.err
    report = json.loads((in_project / "outputs/validation/report.json").read_text())
    assert not report["passed"]
    assert failed_check in {c["name"] for c in report["checks"] if not c["passed"]}
    assert f"`{failed_check}`" in (in_project / "outputs/validation/report.md").read_text()


@pytest.mark.parametrize(
    ("content", "words"), [(b"", "is empty"), (b"\x00\x01\x02binary\xff\xfe", "not a readable CSV")]
)
def test_unreadable_data_fails_validation(
    in_project: Path, capsys: pytest.CaptureFixture[str], content: bytes, words: str
) -> None:
    data = in_project / "data" / "bikeshare_hourly.csv"
    data.unlink()
    data.write_bytes(content)
    assert main(["validate"]) == 1
    assert words in (in_project / "outputs/validation/report.md").read_text()


def test_a_stage_without_its_inputs_says_what_to_run(in_project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train"]) == 2
    assert "run the earlier stages first (`dvc repro`)" in capsys.readouterr().err


def test_new_data_rewrites_the_data_month_by_month(in_project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = in_project / "data" / "bikeshare_hourly.csv"
    assert main(["new-data", "--through", "2011-02"]) == 0
    february = pd.read_csv(data)
    assert february["mnth"].unique().tolist() == ["Jan", "Feb"]
    assert main(["new-data", "--next-month"]) == 0
    march = pd.read_csv(data)
    assert march["mnth"].unique().tolist() == ["Jan", "Feb", "March"]
    assert march.head(len(february)).equals(february)  # history is kept, the new month appended
    feed = (in_project / "feed" / "bikeshare_hourly.csv").read_bytes()
    assert feed.startswith(data.read_bytes())  # byte for byte the feed's own rows
    assert "dvc add data" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["new-data", "--through", "2012-05"], "the feed covers 2011-01 .. 2011-12"),
        (["new-data", "--through", "May"], "must look like YYYY-MM"),
        (["new-data"], "exactly one of"),
    ],
)
def test_new_data_refuses_what_the_feed_cannot_give(
    in_project: Path, capsys: pytest.CaptureFixture[str], args: list[str], words: str
) -> None:
    before = (in_project / "data" / "bikeshare_hourly.csv").read_bytes()
    assert main(args) == 2
    assert words in capsys.readouterr().err
    assert (in_project / "data" / "bikeshare_hourly.csv").read_bytes() == before


def test_new_data_when_the_data_already_holds_the_whole_feed(
    in_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["new-data", "--next-month"]) == 2
    assert "no month after 2011-12" in capsys.readouterr().err


def test_an_unreachable_tracking_server_fails_in_seconds_saying_what_to_do(
    in_project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from .conftest import free_port

    for name in ("validate", "prepare", "train", "evaluate", "backtest", "refit"):
        assert main([name]) == 0
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    assert main(["register"]) == 2
    error = capsys.readouterr().err
    assert "cannot reach the MLflow server" in error
    assert "unset it to track in the local store" in error
    assert not (in_project / "outputs/registry/gate.json").exists()


def test_help_imports_none_of_the_heavy_libraries() -> None:
    probe = (
        "import sys; from forkcast.cli import main; code = main(['--help']); "
        "heavy = [m for m in ('mlflow', 'sklearn', 'pandas', 'pandera', 'onnxruntime') if m in sys.modules]; "
        "print(heavy); sys.exit(code)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=tool_env(), check=False)
    assert result.returncode == 0
    assert result.stdout.strip().endswith("[]")


def test_tolerated_bad_rows_pass_validation_and_are_dropped_by_prepare(
    in_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    break_data(in_project, "out of range")
    params = in_project / "params.yaml"
    params.write_text(params.read_text().replace("min_pass_rate: {}", "min_pass_rate: {temp.in_range: 0.99}"))
    assert main(["validate"]) == 0
    assert main(["prepare"]) == 0
    assert "dropped 1 rows that fail a check the validation tolerated" in capsys.readouterr().out


def test_new_data_refuses_a_month_that_does_not_exist(in_project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new-data", "--through", "2011-13"]) == 2
    assert "not a month" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["smoke"], "exactly one of --url and --env"),
        (["smoke", "--url", "http://127.0.0.1:9", "--env", "staging"], "exactly one of --url and --env"),
        (["smoke", "--env", "staging"], "nothing is deployed to staging: run `forkcast deploy --env staging`"),
        (["smoke", "--env", "prod"], "--env must be one of staging, production, not 'prod'"),
        (["deploy", "--env", "staging"], "no bento built yet"),
        (["deploy", "--env", "production", "--approve"], "nothing is deployed to staging"),
        (["build"], "missing input outputs/prepared/test.parquet"),
    ],
)
def test_serving_commands_say_what_is_missing(
    args: list[str], words: str, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    assert words in capsys.readouterr().err


def test_dataset_shows_what_the_declaration_derives(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dataset"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("bike rentals: Hourly rentals")
    assert "The model's inputs, in model order (also the fields of a request to /predict):" in out
    assert re.search(r"^  month +int +1 to 12 +discrete +calendar: month of the year$", out, re.M)
    assert "baseline  the mean bikers of the same workingday, hr in training" in out
    assert "cycle     a day of 24 hours" in out
    assert "* workingday_consistent" in out  # a rule on features: requests must meet it too


def test_a_broken_declaration_stops_every_command_naming_its_key(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    declaration = in_tmp / "dataset.yaml"
    declaration.write_text(
        declaration.read_text().replace("seasonal_keys: [workingday, hr]", "seasonal_keys: [casual]")
    )
    for command in (["dataset"], ["validate"], ["prepare"], ["train"]):
        assert main(command) == 2
        assert "dataset.yaml: seasonal_keys names 'casual', which is not a feature" in capsys.readouterr().err
    assert not (in_tmp / "outputs").exists()


def test_new_data_without_a_feed_says_how_to_declare_one(in_project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    declaration = in_project / "dataset.yaml"
    declaration.write_text(re.sub(r"^feed: .*\n", "", declaration.read_text(), flags=re.M))
    before = (in_project / "data" / "bikeshare_hourly.csv").read_bytes()
    assert main(["new-data", "--next-month"]) == 2
    assert "no feed to take months from" in capsys.readouterr().err
    assert (in_project / "data" / "bikeshare_hourly.csv").read_bytes() == before


@pytest.mark.slow
@pytest.mark.integration
def test_a_tracking_server_that_hangs_after_the_check_fails_register_and_leaves_no_stale_verdict(
    in_project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """It answers /health, then never answers a request: `register` gives up (mlflow alone would wait ~15 min) and
    the previous run's gate.json is not left as if it were this run's."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from forkcast.model.registry import TRACKING_LIMITS

    released = threading.Event()

    class Hanging(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")
                return
            released.wait(120)

        do_POST = do_GET

        def log_message(self, format: str, *args: object) -> None:
            pass

    for name in ("validate", "prepare", "train", "evaluate", "backtest", "refit"):
        assert main([name]) == 0
    stale = in_project / "outputs/registry/gate.json"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text('{"eligible": true, "verdict": "of an earlier run"}')
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hanging)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for name in TRACKING_LIMITS:
        monkeypatch.delenv(name, raising=False)  # the defaults forkcast sets
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        assert main(["register"]) == 1
    finally:
        released.set()
        server.shutdown()
        server.server_close()
    error = capsys.readouterr().err
    assert "the MLflow server stopped answering" in error
    assert "Read timed out" in error
    assert not stale.exists()


@pytest.mark.slow
@pytest.mark.integration
def test_a_tracking_server_killed_mid_run_fails_register_and_its_run_is_marked_failed_once_it_is_back(
    in_project: Path, tmp_path: Path
) -> None:
    """A real `mlflow server`, killed (SIGKILL, workers too) once `register` has opened its run: register exits 1
    within its documented bounds (the 600 s guard only stops a hang), leaves no verdict; the next register, with
    the server back on the same store, marks the abandoned run FAILED."""
    import signal

    from mlflow import MlflowClient

    from .conftest import free_port, run, start_mlflow_server, stop_mlflow_server

    for name in ("validate", "prepare", "train", "evaluate", "backtest", "refit"):
        assert main([name]) == 0
    store = tmp_path / "mlflow"
    store.mkdir()
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(store, port)
    marker = in_project / "outputs/registry/open-run.json"
    command = [str(BIN / "forkcast"), "register"]
    register = subprocess.Popen(
        command, cwd=in_project, env=tool_env(MLFLOW_TRACKING_URI=uri), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():  # the run is open: the server dies now
            assert register.poll() is None, register.communicate()
            assert time.monotonic() < deadline, "register never opened its run"
            time.sleep(0.05)
        stop_mlflow_server(server, signal.SIGKILL)
        _, error = register.communicate(timeout=600)
    finally:
        register.kill()
    assert register.returncode == 1, error
    assert "the MLflow server stopped answering" in error
    assert not (in_project / "outputs/registry/gate.json").exists()
    abandoned = json.loads(marker.read_text())[uri]  # one open run per tracking server

    server = start_mlflow_server(store, port)
    try:
        again = run(command, in_project, MLFLOW_TRACKING_URI=uri)
        assert again.returncode == 0, again.stderr
        assert f"marked run {abandoned} FAILED" in again.stdout
        client = MlflowClient(uri)
        assert client.get_run(abandoned).info.status == "FAILED"
        assert client.get_run(abandoned).data.tags["forkcast.failure"].startswith("the tracking server stopped")
        assert not marker.exists()
    finally:
        stop_mlflow_server(server)
