"""The inference log: every record lands once, in readable Parquet, locally and on S3."""

from __future__ import annotations

import collections
import datetime as dt
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from forkcast.data.declaration import Feature, Inputs, Target, load
from forkcast.serving import inference_log
from forkcast.serving.inference_log import InferenceLog

from ..conftest import BIN, EXAMPLES, ROOT, free_port, tool_env

INPUTS = load(ROOT / "dataset.yaml").inputs()
SCHEMA = inference_log.log_schema(INPUTS)
RECORD = {
    "season": 4, "hr": 8, "holiday": 0, "weekday": 3, "workingday": 1, "weathersit": "clear",
    "temp": 0.3, "atemp": 0.31, "hum": 0.6, "windspeed": 0.15, "month": 12,
}  # fmt: skip


def columns(count: int, **change: Any) -> dict[str, list[Any]]:
    record = {**RECORD, **change}
    return {name: [record[name]] * count for name in INPUTS.names}


def read(sink: str | Path, **options: Any) -> Any:
    return inference_log.read(str(sink), schema=SCHEMA, **options)


def test_concurrent_appends_are_all_written_exactly_once(tmp_path: Path) -> None:
    log = InferenceLog(str(tmp_path / "log"), INPUTS, environment="test", flush_seconds=0.05)

    def client(number: int) -> None:
        for request in range(200):
            size = 1 + request % 3
            log.append(f"{number}-{request}", "4", columns(size, hr=request % 24), np.full(size, float(request)))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()

    table = read(tmp_path / "log").to_pandas()
    expected_rows = 8 * sum(1 + r % 3 for r in range(200))
    assert len(table) == expected_rows == log.rows_written
    assert not table.duplicated(["request_id", "position"]).any()
    assert table.groupby("request_id")["position"].max().max() == 2
    assert set(table["environment"]) == {"test"}
    assert set(table["model_version"]) == {"4"}
    one = table[table["request_id"] == "3-23"].iloc[0]
    assert (one["hr"], one["prediction"]) == (23, 23.0)


def test_files_are_partitioned_by_date_leaving_no_temporary_files(tmp_path: Path) -> None:
    log = InferenceLog(str(tmp_path), INPUTS, flush_seconds=3600)
    day_one = dt.datetime(2026, 3, 1, 23, 59, tzinfo=dt.UTC)
    log.append("a", "1", columns(2), np.array([1.0, 2.0]), timestamp=day_one)
    log.append("b", "1", columns(1), np.array([3.0]), timestamp=day_one + dt.timedelta(minutes=2))
    assert log.flush() == 3
    log.close()
    partitions = sorted(path.name for path in tmp_path.iterdir())
    assert partitions == ["date=2026-03-01", "date=2026-03-02"]
    assert not list(tmp_path.rglob(".*"))  # no temporary files left behind
    since = read(tmp_path, since=dt.datetime(2026, 3, 2, tzinfo=dt.UTC)).to_pandas()
    assert since["request_id"].tolist() == ["b"]


def test_a_windowed_read_opens_only_the_days_of_the_window(tmp_path: Path) -> None:
    log = InferenceLog(str(tmp_path), INPUTS, flush_seconds=3600)
    log.append("new", "1", columns(1), np.array([1.0]), timestamp=dt.datetime(2026, 3, 2, 8, tzinfo=dt.UTC))
    log.close()
    old_day = tmp_path / "date=2026-01-15"
    old_day.mkdir()
    (old_day / "part-broken.parquet").write_bytes(b"not parquet")  # an old damaged file

    window = read(tmp_path, since=dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
    assert window.column("request_id").to_pylist() == ["new"]
    assert window.schema.names == SCHEMA.names  # no partition column leaks out
    with pytest.raises(pa.ArrowInvalid, match="part-broken"):
        read(tmp_path)  # reading everything does meet it


def test_reading_a_log_that_does_not_exist_yet_gives_no_rows(tmp_path: Path) -> None:
    assert read(tmp_path / "nothing").num_rows == 0
    assert inference_log.read(str(tmp_path / "nothing")).schema.names[-1] == "prediction"  # no features asked


def test_a_failed_write_keeps_the_rows_for_the_next_attempt(tmp_path: Path) -> None:
    sink = tmp_path / "sink"
    sink.write_text("a file where the log directory should be")
    log = InferenceLog(str(sink), INPUTS, flush_seconds=3600)
    log.append("r1", "1", columns(3), np.zeros(3))
    with pytest.raises(NotADirectoryError, match="Cannot create directory"):
        log.flush()
    sink.unlink()
    log.append("r2", "1", columns(1), np.zeros(1))
    assert log.flush() == 4
    log.close()
    assert read(sink).to_pandas()["request_id"].tolist() == ["r1", "r1", "r1", "r2"]


def test_at_shutdown_rows_the_sink_refuses_are_spilled_locally(tmp_path: Path) -> None:
    sink = tmp_path / "sink"
    sink.write_text("not a directory")
    spill = tmp_path / "spill"
    log = InferenceLog(str(sink), INPUTS, flush_seconds=3600, spill_dir=spill)
    log.append("r1", "1", columns(2), np.zeros(2))
    log.close()
    assert read(spill).num_rows == 2
    with pytest.raises(RuntimeError, match="closed"):
        log.append("r2", "1", columns(1), np.zeros(1))


class Recorded:
    """The counters the service gives the log (Prometheus there), recorded."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.most_buffered = 0

    def count(self, outcome: inference_log.Outcome, rows: int) -> None:
        self.counts[outcome] += rows

    def buffered(self, rows: int) -> None:
        self.most_buffered = max(self.most_buffered, rows)


def wait_for(condition: Any, what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"still waiting for {what} after {seconds:.0f} s")
        time.sleep(0.02)


def append_requests(log: InferenceLog, count: int, rows: int = 10) -> None:
    """`count` requests at a pace the writer can follow (a tight loop outruns it: then rows are dropped)."""
    for request in range(count):
        log.append(f"r{request:04d}", "1", columns(rows), np.full(rows, float(request)))
        time.sleep(0.001)


def test_while_the_sink_fails_the_buffer_stays_bounded_and_is_retried_with_backoff_not_per_request(
    tmp_path: Path,
) -> None:
    """The fault measured: a failing sink made every request rebuild and retry the whole growing buffer."""
    sink = tmp_path / "sink"
    sink.write_text("a file where the log directory should be: every write fails")
    counters = Recorded()
    log = InferenceLog(
        str(sink), INPUTS, flush_seconds=0.02, flush_rows=100, max_rows=1_000, retry_seconds=(60, 60),
        spill_dir=tmp_path / "spill", counters=counters,
    )  # fmt: skip
    most_buffered = 0
    for request in range(600):  # 6,000 rows, six times the bound, at a pace the writer can follow
        log.append(f"r{request:04d}", "1", columns(10), np.full(10, float(request)))
        most_buffered = max(most_buffered, log.stats.buffered)
        time.sleep(0.001)
    wait_for(lambda: log.stats.buffered <= 1_000, "the writer to make room")
    assert log.stats.failures == 1  # the next attempt waits for the backoff, whatever the traffic
    assert most_buffered <= 2_000
    assert counters.most_buffered <= 2_000
    assert log.stats.spilled >= 4_000
    assert counters.counts["spilled"] == log.stats.spilled
    assert log.stats.dropped == 0
    assert log.stats.written == 0
    spilled = inference_log.read(str(tmp_path / "spill"), schema=SCHEMA).to_pandas()
    assert len(spilled) == log.stats.spilled
    assert spilled["request_id"].min() == "r0000"  # the oldest rows are the ones that leave memory
    sink.unlink()  # the sink works again: close() writes what is still in memory
    log.close()
    assert log.stats.written + log.stats.spilled == 6_000


def test_spilled_rows_are_moved_into_the_sink_once_it_works_again_and_none_is_lost_or_doubled(
    tmp_path: Path,
) -> None:
    sink = tmp_path / "sink"
    sink.write_text("blocked")
    counters = Recorded()
    log = InferenceLog(
        str(sink), INPUTS, flush_seconds=0.02, flush_rows=100, max_rows=500, retry_seconds=(0.05, 0.2),
        spill_dir=tmp_path / "spill", counters=counters,
    )  # fmt: skip
    append_requests(log, 300)
    wait_for(lambda: log.stats.spilled > 0, "a spill")
    sink.unlink()
    wait_for(lambda: log.stats.returned == log.stats.spilled, "the spilled rows to be moved into the sink")
    log.close()
    assert not log.failing
    logged = read(sink).to_pandas()
    assert len(logged) == 3_000
    assert not logged.duplicated(["request_id", "position"]).any()
    assert counters.counts["returned"] == log.stats.returned
    assert counters.counts["failed"] >= 1
    assert not list((tmp_path / "spill").rglob("*.parquet"))


def test_the_spill_limit_is_what_the_directory_holds_so_a_second_outage_can_spill_again(tmp_path: Path) -> None:
    mount, spill = tmp_path / "mount", tmp_path / "spill"
    sink = mount / "sink"
    log = InferenceLog(
        str(sink), INPUTS, flush_seconds=0.02, flush_rows=100, max_rows=500, retry_seconds=(0.05, 0.1),
        spill_dir=spill, max_spill_bytes=1,  # one file fills it
    )  # fmt: skip
    for outage in range(2):
        if mount.exists():
            mount.rename(tmp_path / "away")  # the disk goes away, what it holds kept aside
        mount.write_text("a file where the log's disk should be")
        spilled_before = log.stats.spilled
        append_requests(log, 100)
        wait_for(lambda: log.stats.spilled > spilled_before, f"a spill in outage {outage + 1}")  # noqa: B023
        mount.unlink()
        if (tmp_path / "away").exists():
            (tmp_path / "away").rename(mount)
        wait_for(lambda: log.stats.returned == log.stats.spilled, f"the spill of outage {outage + 1} moved back")
    log.close()
    assert log.stats.written + log.stats.returned + log.stats.dropped == 2_000
    assert len(read(sink)) + log.stats.dropped == 2_000


def test_rows_spilled_at_shutdown_are_moved_into_the_sink_by_the_next_server(tmp_path: Path) -> None:
    sink, spill = tmp_path / "sink", tmp_path / "spill"
    sink.write_text("blocked")
    first = InferenceLog(str(sink), INPUTS, flush_seconds=3600, spill_dir=spill)
    append_requests(first, 5)
    first.close()
    assert read(spill).num_rows == 50
    sink.unlink()
    second = InferenceLog(str(sink), INPUTS, flush_seconds=0.02, spill_dir=spill)
    wait_for(lambda: second.stats.returned == 50, "the next server to move the spilled rows")
    second.close()
    assert sorted(read(sink).to_pandas()["request_id"].unique()) == [f"r{n:04d}" for n in range(5)]


def test_when_the_spill_fails_too_the_oldest_rows_are_dropped_and_counted(tmp_path: Path) -> None:
    sink, spill = tmp_path / "sink", tmp_path / "spill"
    sink.write_text("blocked")
    spill.write_text("a file where the spill directory should be")
    counters = Recorded()
    log = InferenceLog(
        str(sink), INPUTS, flush_seconds=0.02, flush_rows=100, max_rows=1_000, retry_seconds=(60, 60),
        spill_dir=spill, counters=counters,
    )  # fmt: skip
    append_requests(log, 300)
    wait_for(lambda: log.stats.buffered <= 1_000, "the writer to make room")
    assert log.stats.dropped >= 2_000
    assert counters.counts["dropped"] == log.stats.dropped
    assert log.stats.spilled == 0
    sink.unlink()
    log.close()
    kept = read(sink).to_pandas()
    assert len(kept) + log.stats.dropped == 3_000
    assert kept["request_id"].max() == "r0299"  # the newest rows are kept
    assert kept["request_id"].min() > "r0000"


def test_a_write_that_fills_the_disk_leaves_no_partial_file_behind(tmp_path: Path) -> None:
    """A real small filesystem (tmpfs; mounting one needs root): the failed file must not keep the space."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.decode().strip()}")
    try:
        log = InferenceLog(  # written only when flush() is called
            str(disk / "log"), INPUTS, flush_seconds=3600, flush_rows=10**9, spill_dir=tmp_path / "spill"
        )
        noise = np.random.default_rng(0)
        for request in range(400):  # 20,000 rows of random predictions: over 64 KiB of Parquet
            log.append(f"r{request}", "1", columns(50), noise.random(50))
        with pytest.raises(OSError, match=r"No space left|Error writing"):
            log.flush()
        assert not [path for path in disk.rglob("*") if path.is_file()]
        log.close()  # spilled instead
        assert read(tmp_path / "spill").num_rows == 20_000
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)


def test_a_day_that_fails_is_retried_without_writing_the_other_day_twice(tmp_path: Path) -> None:
    log = InferenceLog(str(tmp_path), INPUTS, flush_seconds=3600)
    before_midnight = dt.datetime(2026, 3, 1, 23, 59, tzinfo=dt.UTC)
    log.append("a", "1", columns(2), np.zeros(2), timestamp=before_midnight)
    log.append("b", "1", columns(1), np.zeros(1), timestamp=before_midnight + dt.timedelta(minutes=2))
    blocker = tmp_path / "date=2026-03-02"
    blocker.write_text("a file where the second day's directory should be")
    with pytest.raises(FileExistsError, match="non-directory entry exists"):
        log.flush()
    assert log.rows_written == 2  # the first day made it
    blocker.unlink()
    assert log.flush() == 1
    log.close()
    table = read(tmp_path).to_pandas()
    assert sorted(table["request_id"]) == ["a", "a", "b"]


def test_the_log_has_a_column_per_feature_typed_as_declared(tmp_path: Path) -> None:
    """Whole numbers stay whole (and are not cut to a byte), numbers are floats, text is text."""
    inputs = Inputs(
        dataset="stores",
        features=(
            Feature(name="store", type="int", min=0, max=100_000),
            Feature(name="price", type="float", min=0),
            Feature(name="region", type="str", categories=("north", "south")),
        ),
        target=Target(name="sold", type="int", unit="units"),
        frequency={"minutes": 1_440},  # type: ignore[arg-type]
    )
    log = InferenceLog(str(tmp_path), inputs, flush_seconds=3600)
    log.append("r", "1", {"store": [99_999], "price": [2.5], "region": ["south"]}, np.array([7.0]))
    log.close()
    schema = inference_log.log_schema(inputs)
    assert {name: str(schema.field(name).type) for name in inputs.names} == {
        "store": "int64", "price": "float", "region": "string",
    }  # fmt: skip
    row = inference_log.read(str(tmp_path), schema=schema).to_pylist()[0]
    assert (row["store"], row["price"], row["region"], row["prediction"]) == (99_999, 2.5, "south", 7.0)
    electricity = inference_log.log_schema(EXAMPLES["electricity"].dataset.inputs())
    assert str(electricity.field("WorkDay").type) == "int64"
    assert str(electricity.field("minute_of_day").type) == "int64"
    assert str(electricity.field("Temperature").type) == "float"


@pytest.fixture
def s3_sink(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real S3-compatible server (moto) with an empty bucket."""
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env=tool_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    try:
        import urllib.request

        deadline = time.monotonic() + 20
        while True:
            try:
                request = urllib.request.Request(f"{endpoint}/inference", method="PUT")
                urllib.request.urlopen(request, timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield "s3://inference/production"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.integration
def test_the_log_goes_to_s3_when_configured(s3_sink: str) -> None:
    log = InferenceLog(s3_sink, INPUTS, flush_seconds=0.05)
    for request in range(50):
        log.append(f"r{request}", "2", columns(2), np.array([1.0, 2.0]))
    log.close()
    table = read(s3_sink).to_pandas()
    assert len(table) == 100
    assert table["request_id"].nunique() == 50
