"""`forkcast score`: the real model (the session's bento) scores the real data into SQLite and a real PostgreSQL server.

Every test that touches a database runs on both: a SQLite file, and a PostgreSQL 15 server started for this module
in a temporary directory (tests/batch/postgres.py; skipped with the reason where none is installed, failed in CI).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from forkcast.batch import score as scoring
from forkcast.batch import table as tables
from forkcast.cli import common, main
from forkcast.config import Params
from forkcast.data.prepare import Splits
from forkcast.model.onnx import gaps
from forkcast.model.train import TrainedModel
from forkcast.serving import build

from ..conftest import BIN, Built, free_port, tool_env
from . import postgres

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    try:
        with postgres.server() as url:
            yield url
    except postgres.Unavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"no PostgreSQL server in CI: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file that does not exist yet, or the module's PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'predictions.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(scope="module")
def model(built: Built) -> scoring.ScoringModel:
    return scoring.from_store(built.tag)


def table_name() -> str:
    return f"predictions_{uuid.uuid4().hex[:8]}"  # tests share the PostgreSQL server


def rows_of(url: str, table: str) -> pd.DataFrame:
    engine = sa.create_engine(tables.parse_url(url))
    try:
        with engine.connect() as connection:
            return pd.read_sql_table(table, connection)
    finally:
        engine.dispose()


def features(split: pd.DataFrame, params: Params) -> pd.DataFrame:
    return split[list(params.dataset.feature_names)]


def test_the_test_period_goes_into_the_table_with_its_lineage_and_a_retry_adds_nothing(
    database: str, built: Built, splits: Splits, trained: TrainedModel, params: Params, data_file: Path,
    in_tmp: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    (in_tmp / "outputs" / "build").mkdir(parents=True)  # the last build is the default bento
    shutil.copy(built.output_dir / build.BUILD_JSON.name, in_tmp / "outputs" / "build")
    test = splits.test
    first, last = test["timestamp"].min().date(), test["timestamp"].max().date()
    table = table_name()
    command = ["score", "--data", str(data_file), "--from", str(first), "--to", str(last), "--database-url", database,
               "--table", table]  # fmt: skip
    started = dt.datetime.now(dt.UTC)
    assert main(command) == 0
    out, err = capsys.readouterr()
    assert f"{len(test):,}/{len(test):,} rows" in err
    assert "rows/s" in err
    written = rows_of(database, table)
    assert len(written) == len(test)
    # One row per period of the test split, keyed by its time, with the inputs it was given.
    by_key = written.set_index("row_key").loc[np.datetime_as_string(test["timestamp"].to_numpy(), unit="s")]
    assert (pd.to_datetime(by_key["period"]).to_numpy() == test["timestamp"].to_numpy()).all()
    for name in params.dataset.feature_names:
        assert by_key[name].tolist() == pytest.approx(test[name].tolist()), name
    # The pipeline's own predictions, through ONNX Runtime within the tolerance the service allows.
    expected = params.dataset.inputs().target.clip(trained.pipeline.predict(features(test, params)))
    assert gaps(by_key["prediction"].to_numpy(), expected).max() <= params.train.onnx_tolerance
    # Lineage, as the bento's model records it.
    lineage = built.lineage
    assert set(written["bento"]) == {built.tag}
    assert set(written["model_version"]) == {str(lineage["model_version"])}
    assert set(written["data_hash"]) == {lineage["data_hash"]}
    assert set(written["git_commit"]) == {lineage["git_commit"]}
    assert set(written["bento_model"]) == {build.describe(built.tag).model}
    assert set(written["backend"]) == {"onnx"}
    scored_at = set(pd.to_datetime(written["scored_at"], utc=True))
    assert len(scored_at) == 1
    assert started <= scored_at.pop() <= dt.datetime.now(dt.UTC)

    assert main(command) == 0  # a retry: nothing added, nothing overwritten
    out, _ = capsys.readouterr()
    assert f"0 predictions of {lineage['model_name']}" in out
    assert f"{len(test):,} were there already" in out
    again = rows_of(database, table)
    pd.testing.assert_frame_equal(again.sort_values("row_key", ignore_index=True),
                                  written.sort_values("row_key", ignore_index=True))  # fmt: skip


def test_a_file_is_keyed_by_its_time_its_key_columns_or_its_position(
    model: scoring.ScoringModel, splits: Splits, params: Params, tmp_path: Path
) -> None:
    url = tables.parse_url(f"sqlite:///{tmp_path / 'p.db'}")
    writer = tables.connect(url, "predictions", model.inputs)
    writer.create()
    test = splits.test.head(300)

    def run(frame: pd.DataFrame, name: str, key: Sequence[str] = ()) -> scoring.ScoreResult:
        path = tmp_path / name
        frame.to_parquet(path, index=False) if name.endswith(".parquet") else frame.to_csv(path, index=False)
        read, digest = scoring.read_file(str(path), model.inputs)
        batch = scoring.batch_of(read, model.inputs, source=name, key=key, digest=digest)
        return scoring.score(model, batch, writer, scored_at=dt.datetime.now(dt.UTC), chunk_rows=128)

    # With its time: the same keys as the project's data, whatever the file's format.
    assert run(test, "test.parquet").added == 300
    assert run(test.sample(frac=1, random_state=1), "shuffled.csv").added == 0
    # Without: its position, tied to the file's bytes: the same file adds nothing again, another file its own rows.
    inputs_only = features(test, params)
    assert run(inputs_only, "inputs.csv").added == 300
    assert run(inputs_only, "inputs.csv").added == 0
    assert run(inputs_only.head(299), "shorter.csv").added == 299
    # With --key: an id of the caller's, whatever the order of the rows.
    with_id = inputs_only.assign(store=7, id=range(300))
    assert run(with_id, "ids.parquet", key=["id", "store"]).added == 300
    assert run(with_id.iloc[::-1], "reversed.parquet", key=["id", "store"]).added == 0
    keys = rows_of(str(url), "predictions")["row_key"]
    assert "0|store=7" in set(keys)
    assert keys.is_unique
    assert writer.count(bento=model.bento) == 300 + 300 + 299 + 300


def broken(test: pd.DataFrame, params: Params, change: str) -> pd.DataFrame:
    frame = pd.concat([test[["timestamp"]], features(test, params)], axis=1).head(50).copy()
    if change == "out of range":
        frame.loc[5, "hum"] = 1.5
    elif change == "text for a number":
        frame["hr"] = frame["hr"].astype(str)
    elif change == "a boolean for 0/1":
        frame["holiday"] = frame["holiday"].astype(bool)
    elif change == "unknown category":
        frame.loc[7, "weathersit"] = "sunny"
    elif change == "missing value":
        frame.loc[3, "windspeed"] = np.nan
    elif change == "missing column":
        frame = frame.drop(columns=["temp", "atemp"])
    elif change == "broken rule":
        row = frame.index[frame["workingday"] == 1][2]
        frame.loc[row, "workingday"] = 0
    elif change == "duplicated key":
        frame.loc[9, "timestamp"] = frame.loc[8, "timestamp"]
    elif change == "not a time":
        frame["timestamp"] = frame["timestamp"].astype(str)
        frame.loc[4, "timestamp"] = "yesterday"
    return frame


REFUSALS = {
    "out of range": ["column hum", "1 of 50 rows fail", "row 5 holds 1.5: Input should be less than or equal to 1"],
    "text for a number": ["column hr (whole numbers", "50 of 50 rows fail", "row 0 holds '", "valid integer"],
    "a boolean for 0/1": ["column holiday", "row 0 holds False"],
    "unknown category": ["column weathersit", "row 7 holds 'sunny'"],
    "missing value": ["column windspeed", "1 missing values, the first in row 3"],
    "missing column": ["missing column(s) temp, atemp"],
    "broken rule": ["breaks the rule workingday_consistent", "workingday=0"],
    "duplicated key": ["rows 8 and 9 have the same key"],
    "not a time": ["column timestamp", "first in row 4 ('yesterday')"],
}


@pytest.mark.parametrize("change", list(REFUSALS))
def test_input_that_breaks_the_contract_is_refused_by_column_and_row(
    change: str, model: scoring.ScoringModel, splits: Splits, params: Params
) -> None:
    frame = broken(splits.test.reset_index(drop=True), params, change)
    with pytest.raises(scoring.InvalidInputError) as refused:
        scoring.batch_of(frame, model.inputs, source="input.parquet")
    for words in REFUSALS[change]:
        assert words in str(refused.value), str(refused.value)
    assert refused.value.exit_code == common.EXIT_CHECK_FAILED
    scoring.batch_of(broken(splits.test.reset_index(drop=True), params, "none"), model.inputs, source="fine")


def test_a_refused_file_changes_nothing_in_the_database(
    built: Built, splits: Splits, params: Params, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = tmp_path / "good.parquet", tmp_path / "bad.parquet"
    broken(splits.test.reset_index(drop=True), params, "none").to_parquet(good)
    broken(splits.test.reset_index(drop=True), params, "out of range").to_parquet(bad)
    fresh = tmp_path / "fresh.db"
    command = ["score", "--bento", built.tag, "--input", str(bad), "--database-url", f"sqlite:///{fresh}"]
    assert main(command) == common.EXIT_CHECK_FAILED
    assert "column hum" in capsys.readouterr().err
    assert not fresh.exists()  # not even an empty file
    used = tmp_path / "used.db"
    assert main(["score", "--bento", built.tag, "--input", str(good), "--database-url", f"sqlite:///{used}"]) == 0
    before = used.read_bytes()
    assert main([*command[:-1], f"sqlite:///{used}"]) == common.EXIT_CHECK_FAILED
    assert used.read_bytes() == before


def test_a_table_that_does_not_fit_is_refused_naming_its_columns(database: str, model: scoring.ScoringModel) -> None:
    url = tables.parse_url(database)
    name = table_name()
    engine = sa.create_engine(url)
    wanted = tables.define(name, model.inputs)
    columns = [sa.Column(c.name, sa.Text if c.name == "hr" else c.type) for c in wanted.columns if c.name != "hum"]
    metadata = sa.MetaData()
    sa.Table(name, metadata, *columns, sa.Column("comment", sa.Text), sa.PrimaryKeyConstraint(*scoring.KEY))
    keyless = sa.Table(f"{name}_keyless", metadata, *[sa.Column(c.name, c.type) for c in wanted.columns])
    metadata.create_all(engine)
    engine.dispose()
    with pytest.raises(scoring.ScoringError) as refused:
        tables.connect(url, name, model.inputs)
    message = str(refused.value)
    assert "missing column(s) hum (DOUBLE" in message
    assert "extra column(s) comment" in message
    assert "hr is TEXT, not BIGINT" in message
    assert "password" not in message
    assert refused.value.exit_code == common.EXIT_USAGE
    with pytest.raises(
        scoring.ScoringError, match=r"no primary key or unique index on \(row_key, model_version, bento"
    ):
        tables.connect(url, keyless.name, model.inputs)
    tables.connect(url, f"{name}_new", model.inputs).create()  # a table it makes itself fits
    tables.connect(url, f"{name}_new", model.inputs)


def test_an_unknown_bento_and_bad_database_urls_are_refused_before_anything_is_written(
    built: Built, splits: Splits, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "test.parquet"
    splits.test.to_parquet(source)
    port = free_port()  # nothing listens there
    cases = {
        ("--bento", "forkcast:v0-000000000000"): "no bento forkcast:v0-000000000000",
        ("--database-url", "mysql://someone@127.0.0.1/db"): "only SQLite and PostgreSQL",
        ("--database-url", "::not a url::"): "is not a URL",
        ("--database-url", "sqlite://"): "a database in memory",
        ("--database-url", f"sqlite:///{tmp_path / 'nowhere' / 'p.db'}"): "does not exist",
        ("--database-url", f"postgresql://someone:s3cret@127.0.0.1:{port}/db"): "cannot connect to",
        ("--shard", "4/4"): "--shard must be INDEX/COUNT",
        ("--chunk-rows", "0"): "--chunk-rows must be between",
    }
    for option, words in cases.items():
        defaults = {"--bento": built.tag, "--database-url": f"sqlite:///{tmp_path / 'p.db'}"}
        given = {**defaults, option[0]: option[1]}
        arguments = ["score", "--input", str(source), *[part for pair in given.items() for part in pair]]
        assert main(arguments) == common.EXIT_USAGE, option
        err = capsys.readouterr().err
        assert words in err, (option, err)
        assert "s3cret" not in err
    assert not (tmp_path / "p.db").exists()


class FailingOnce:
    """A sink whose `fail_at`-th write breaks a NOT NULL on its last row: the database refuses the whole chunk."""

    def __init__(self, writer: tables.Writer, fail_at: int) -> None:
        self.writer, self.fail_at, self.writes = writer, fail_at, 0

    def holds_any(self, model_version: str, bento: str) -> bool:
        return self.writer.holds_any(model_version, bento)

    def existing(self, keys: Sequence[str], model_version: str, bento: str) -> set[str]:
        return self.writer.existing(keys, model_version, bento)

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.writes += 1
        if self.writes == self.fail_at:
            rows = [*rows[:-1], {**rows[-1], scoring.PREDICTION: None}]
        self.writer.write(rows)


def test_a_failed_chunk_is_rolled_back_and_the_next_run_resumes_without_duplicates(
    database: str, model: scoring.ScoringModel, splits: Splits
) -> None:
    url, name = tables.parse_url(database), table_name()
    batch = scoring.batch_of(splits.test, model.inputs, source="test split")
    writer = tables.connect(url, name, model.inputs)
    writer.create()
    first_run = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    with pytest.raises(scoring.StoppedError) as stopped:
        scoring.score(model, batch, FailingOnce(writer, fail_at=3), scored_at=first_run, chunk_rows=200)
    assert "400 of" in str(stopped.value)
    assert "Run the same command again" in str(stopped.value)
    assert writer.count() == 400  # two whole chunks; none of the third
    result = scoring.score(model, batch, writer, scored_at=dt.datetime.now(dt.UTC), chunk_rows=200)
    assert (result.added, result.already) == (len(batch) - 400, 400)
    written = rows_of(database, name)
    assert len(written) == len(batch)
    assert written["row_key"].is_unique
    assert set(written["row_key"]) == set(batch.keys)
    earlier = written[pd.to_datetime(written["scored_at"], utc=True) == pd.Timestamp(first_run)]
    assert set(earlier["row_key"]) == set(batch.keys[:400])  # kept as the first run wrote them


def test_a_killed_run_resumes_where_it_stopped_without_duplicates(
    built: Built, splits: Splits, params: Params, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = features(pd.concat([splits.train, splits.validation, splits.test]), params)
    source = tmp_path / "inputs.parquet"
    pd.concat([inputs] * 6, ignore_index=True).to_parquet(source)  # keyed by position: 6 x 8,645 rows
    total, database = 6 * len(inputs), tmp_path / "p.db"
    command = ["score", "--bento", built.tag, "--input", str(source), "--database-url", f"sqlite:///{database}",
               "--chunk-rows", "250"]  # fmt: skip
    run = subprocess.Popen([str(BIN / "forkcast"), *command], env=tool_env(BENTOML_HOME=os.environ["BENTOML_HOME"]),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip

    def written() -> int:
        try:
            with sqlite3.connect(database, timeout=10) as connection:
                return int(connection.execute("SELECT count(*) FROM predictions").fetchone()[0])
        except sqlite3.OperationalError:  # not created yet
            return 0

    deadline = time.monotonic() + 120
    while written() == 0:
        assert run.poll() is None, run.communicate()[0]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=30)
    done = written()
    assert 0 < done < total, done  # killed part-way
    assert done % 250 == 0, done  # whole chunks only
    assert main(command) == 0
    out = capsys.readouterr().out
    assert f"{total - done:,} predictions" in out
    assert f"{done:,} were there already" in out
    with sqlite3.connect(database) as connection:
        count, keys = connection.execute("SELECT count(*), count(DISTINCT row_key) FROM predictions").fetchone()
    assert count == keys == total


def test_shards_are_disjoint_cover_the_input_and_keep_its_keys(
    model: scoring.ScoringModel, splits: Splits, tmp_path: Path
) -> None:
    batch = scoring.batch_of(splits.test, model.inputs, source="test split")
    shards = [scoring.shard(batch, index, 3) for index in range(3)]
    assert [len(part) for part in shards] == [len(range(index, len(batch), 3)) for index in range(3)]
    assert list(shards[1].keys[:2]) == [batch.keys[1], batch.keys[4]]
    assert (shards[2].columns["hum"] == batch.columns["hum"][2::3]).all()
    writer = tables.connect(tables.parse_url(f"sqlite:///{tmp_path / 'p.db'}"), "predictions", model.inputs)
    writer.create()
    now = dt.datetime.now(dt.UTC)
    assert sum(scoring.score(model, part, writer, scored_at=now).added for part in shards) == len(batch)
    assert scoring.score(model, batch, writer, scored_at=now).added == 0  # the whole adds nothing the shards wrote
    assert set(rows_of(f"sqlite:///{tmp_path / 'p.db'}", "predictions")["row_key"]) == set(batch.keys)
    assert scoring.parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(scoring.ScoringError, match="--shard must be INDEX/COUNT"):
            scoring.parse_shard(bad)


def test_the_exit_codes_are_the_cli_s() -> None:
    assert (scoring.EXIT_CHECK_FAILED, scoring.EXIT_USAGE, scoring.EXIT_NOTHING_YET) == (
        common.EXIT_CHECK_FAILED, common.EXIT_USAGE, common.EXIT_NOTHING_YET,
    )  # fmt: skip


def test_a_postgresql_table_in_its_own_schema_takes_the_rows_once(
    postgres_url: str, built: Built, splits: Splits, params: Params, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """PostgreSQL's chunks go through COPY into a temporary table, then INSERT ... ON CONFLICT DO NOTHING: a
    schema-qualified table (quoted, in case its name needs it) gets every row once, and a rerun adds none."""
    schema = f"Analytics_{uuid.uuid4().hex[:6]}"  # mixed case: only a quoted identifier keeps it
    engine = sa.create_engine(tables.parse_url(postgres_url))
    with engine.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    source = tmp_path / "rows.parquet"
    features(splits.test, params).to_parquet(source)
    table = f"{schema}.{table_name()}"
    command = ["score", "--bento", built.tag, "--input", str(source), "--database-url", postgres_url, "--table", table,
               "--chunk-rows", "500"]  # fmt: skip
    assert main(command) == 0
    assert main(command) == 0
    assert f"{len(splits.test):,} were there already" in capsys.readouterr().out
    engine = sa.create_engine(tables.parse_url(postgres_url))
    try:
        with engine.connect() as connection:
            written = pd.read_sql_table(table.split(".")[1], connection, schema=schema)
    finally:
        engine.dispose()
    assert len(written) == written["row_key"].nunique() == len(splits.test)
    assert set(written["bento"]) == {built.tag}


def test_a_chunk_that_overlaps_written_rows_adds_only_the_new_ones_and_keeps_the_old(
    database: str, model: scoring.ScoringModel, splits: Splits
) -> None:
    """The write itself, under the resume logic: rows already there (another shard, a run that died after its
    commit) are kept as they were, a key twice in one chunk is written once, and a row without a period is NULL."""
    url, name = tables.parse_url(database), table_name()
    batch = scoring.batch_of(splits.test, model.inputs, source="test split")
    writer = tables.connect(url, name, model.inputs)
    writer.create()
    first = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    constant = {**model.lineage(), "source": batch.source, "scored_at": first}
    rows = scoring.rows_of(model, batch, np.arange(100), constant)
    writer.write(rows[:60])
    later = [{**row, "prediction": -1.0, "scored_at": dt.datetime(2026, 2, 1, tzinfo=dt.UTC)} for row in rows]
    no_period = {**later[99], "row_key": "no-period", "period": None}
    writer.write([*later[40:100], later[70], no_period])
    written = rows_of(database, name).set_index("row_key")
    assert len(written) == 101
    kept = written.loc[[row["row_key"] for row in rows[:60]]]
    assert (kept["prediction"] != -1.0).all()  # never overwritten
    assert (pd.to_datetime(kept["scored_at"], utc=True) == pd.Timestamp(first)).all()
    added = written.loc[[row["row_key"] for row in rows[60:]]]
    assert (added["prediction"] == -1.0).all()
    assert pd.isna(written.loc["no-period", "period"])


def test_a_postgresql_role_that_may_not_create_temporary_tables_still_writes(
    postgres_url: str, built: Built, splits: Splits, params: Params, tmp_path: Path
) -> None:
    """COPY stages each chunk in a temporary table; a role without TEMP on the database (locked-down managed
    servers) falls back to the multi-row INSERT, with the same rows in the end."""
    admin = sa.create_engine(tables.parse_url(postgres_url))
    role, schema = f"scorer_{uuid.uuid4().hex[:6]}", f"reports_{uuid.uuid4().hex[:6]}"
    with admin.begin() as connection:
        connection.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
        connection.execute(sa.text(f"CREATE SCHEMA {schema} AUTHORIZATION {role}"))
        connection.execute(sa.text("REVOKE TEMPORARY ON DATABASE postgres FROM PUBLIC"))
    try:
        limited = tables.parse_url(postgres_url).set(username=role)
        refused = pytest.raises(sa.exc.ProgrammingError, match="permission denied to create temporary tables")
        with sa.create_engine(limited).connect() as connection, refused:
            connection.execute(sa.text("CREATE TEMPORARY TABLE probe (x int)"))
        source = tmp_path / "rows.parquet"
        features(splits.test, params).to_parquet(source)
        table = f"{schema}.{table_name()}"
        command = ["score", "--bento", built.tag, "--input", str(source), "--table", table, "--chunk-rows", "300",
                   "--database-url", limited.render_as_string(hide_password=False)]  # fmt: skip
        assert main(command) == 0
        with admin.connect() as connection:
            count = connection.scalar(sa.text(f"SELECT count(DISTINCT row_key) FROM {table}"))
        assert count == len(splits.test)
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text("GRANT TEMPORARY ON DATABASE postgres TO PUBLIC"))
        admin.dispose()
