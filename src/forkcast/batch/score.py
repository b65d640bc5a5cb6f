"""Batch scoring: a table scored by a built bento's model, chunk by chunk, each chunk's predictions to a sink.

The model is the one inside a bento, loaded as the service loads it (`predictor.load`: ONNX Runtime when it agrees
with the pipeline on the golden cases), with the lineage the service's `/metadata` shows (`contract.ModelInfo`).
Every row is checked against the model's own input contract before anything is written, with the service's own
field types (`contract.field_type`, strict) and request rules: a row the service would refuse with a 400 is refused
here, naming its column or rule and the first row that breaks it.

Each row has a key, what it predicts: its time (the `timestamp` column, and the series columns when several series
share a period), the columns given with `--key`, or else its position in the file together with the file's digest.
The table's unique key is (row_key, model_version, bento), and each chunk is written in one transaction, so a
retried or interrupted run adds nothing twice and resumes where it stopped: a chunk whose rows are all written is
skipped without being scored.

This module also runs inside the release image (`python -m forkcast.batch`): it imports only what bentofile.yaml
includes and the bento's packages.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError

from forkcast.data import expressions
from forkcast.data.declaration import Feature, Inputs
from forkcast.serving import predictor
from forkcast.serving.contract import BENTO_MODEL_NAME, ModelInfo, field_type
from forkcast.values import plain

# The exit codes of forkcast.cli.common (not imported from there: the image has no typer).
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_NOTHING_YET = 3

# The columns of a predictions row besides the model's inputs.
ROW_KEY = "row_key"  # what the row predicts: its time (and series), its --key columns, or digest#position
PERIOD = "period"  # the time it predicts, when the input has one
PREDICTION = "prediction"
LINEAGE = (
    "model_name", "model_version", "bento", "bento_model", "run_id", "data_hash", "git_commit", "trained_at", "backend",
)  # fmt: skip
SOURCE = "source"  # what was scored: the file and its digest, or the data and dates
SCORED_AT = "scored_at"  # when the run started (UTC)
COLUMNS = (ROW_KEY, PERIOD, PREDICTION, *LINEAGE, SOURCE, SCORED_AT)
KEY = (ROW_KEY, "model_version", "bento")  # a row is written once per model version and bento

TIME_COLUMN = "timestamp"  # a file's time, named as in the prepared data
DEFAULT_CHUNK_ROWS = 10_000
MAX_CHUNK_ROWS = 100_000
BACKEND_ENV = "FORKCAST_BACKEND"  # scikit-learn: score without ONNX Runtime, as the service
_SLICE = 100_000  # rows validated at a time


class ScoringError(Exception):
    """Nothing was written: a bad option, bento, database or table. The message says what to change."""

    exit_code = EXIT_USAGE


class InvalidInputError(ScoringError):
    """The input breaks the model's contract (a column, a value, a rule, a key); nothing was written."""

    exit_code = EXIT_CHECK_FAILED


class NothingToScoreError(ScoringError):
    exit_code = EXIT_NOTHING_YET


class WriteError(ScoringError):
    """The database failed during a write: the chunk being written was rolled back."""

    exit_code = EXIT_CHECK_FAILED


class StoppedError(ScoringError):
    """A run that stopped part-way (a failed write, an interrupt): the chunks before it are written."""

    exit_code = EXIT_CHECK_FAILED


# --- the model -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoringModel:
    bento: str  # its tag
    info: ModelInfo  # as the service's /metadata shows it
    inputs: Inputs
    predictor: predictor.Predictor
    test_period: tuple[dt.date, dt.date] | None  # the model's test split, where its metadata records it

    def lineage(self) -> dict[str, str | None]:
        """The lineage columns of each row it scores."""
        info = self.info
        return {
            "model_name": info.model_name, "model_version": info.model_version, "bento": self.bento,
            "bento_model": info.bento_model, "run_id": info.run_id, "data_hash": info.data_hash,
            "git_commit": info.git_commit, "trained_at": info.trained_at, "backend": info.backend,
        }  # fmt: skip


def prefer_onnx(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(BACKEND_ENV, "onnx") != "scikit-learn"


def load_model(model_dir: Path, metadata: Mapping[str, Any], *, bento: str, model_tag: str) -> ScoringModel:
    """The model of `model_dir` (a bento's model) with the lineage of its `metadata`, loaded as the service loads it."""
    try:
        found = predictor.contract(model_dir)
        loaded = predictor.load(
            model_dir,
            found.inputs.target,
            onnx_tolerance=float(metadata.get("onnx_tolerance", 0.001)),
            prefer_onnx=prefer_onnx(),
        )
    except (OSError, ValueError) as exc:
        raise ScoringError(f"{model_tag} cannot be loaded ({exc}): rebuild the bento (`forkcast build`)") from exc
    inputs = found.inputs
    info = ModelInfo(
        model_name=str(metadata.get("model_name", BENTO_MODEL_NAME)),
        model_version=str(metadata.get("model_version", "unregistered")),
        bento_model=model_tag,
        run_id=_text(metadata.get("run_id")),
        data_hash=_text(metadata.get("data_hash")),
        git_commit=_text(metadata.get("git_commit")),
        trained_at=_text(metadata.get("trained_at")),
        metrics={str(key): float(value) for key, value in dict(metadata.get("metrics") or {}).items()},
        backend=loaded.backend,
        onnx_max_gap=loaded.onnx_max_gap,
        dataset=inputs.dataset,
        target=inputs.target.name,
        unit=inputs.target.unit,
        frequency=inputs.frequency.period,
        features=list(inputs.names),
        inputs=inputs.model_dump(mode="json"),
        example=found.example,
    )
    return ScoringModel(bento, info, inputs, loaded, _test_period(metadata.get("test_period")))


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _test_period(recorded: Any) -> tuple[dt.date, dt.date] | None:
    if not isinstance(recorded, dict) or not recorded.get("start") or not recorded.get("end"):
        return None
    return dt.datetime.fromisoformat(recorded["start"]).date(), dt.datetime.fromisoformat(recorded["end"]).date()


def from_store(bento_tag: str) -> ScoringModel:
    """A bento of the project's BentoML store (`forkcast build`), found as `forkcast deploy` finds it."""
    from forkcast.serving import build

    build.use_project_store()
    import bentoml
    from bentoml.exceptions import BentoMLException

    try:
        description = build.describe(bento_tag)
        model = bentoml.models.get(description.model)
    except build.BuildError as exc:
        raise ScoringError(str(exc)) from exc
    except BentoMLException as exc:
        raise ScoringError(
            f"the model of {bento_tag} is not in the store ({exc}): rebuild it (`forkcast build`)"
        ) from exc
    return load_model(Path(model.path), dict(model.info.metadata), bento=bento_tag, model_tag=str(model.tag))


def from_bento_dir(bento_dir: Path) -> ScoringModel:
    """The bento a release image holds (`$BENTO_PATH`): its bento.yaml and the served model under its models/."""
    try:
        bento = yaml.safe_load((bento_dir / "bento.yaml").read_text())
        tag = f"{bento['name']}:{bento['version']}"
        models = [str(model["tag"]) for service in bento.get("services") or [] for model in service.get("models") or []]
    except (OSError, yaml.YAMLError, TypeError, KeyError) as exc:
        raise ScoringError(f"{bento_dir} holds no readable bento.yaml ({exc}): point BENTO_PATH at a bento") from exc
    served = [model for model in models if model.partition(":")[0] == BENTO_MODEL_NAME]  # not a challenger beside it
    if len(served) != 1:
        raise ScoringError(f"{tag} holds {len(served)} {BENTO_MODEL_NAME} models ({', '.join(models)}), not one")
    name, _, version = served[0].partition(":")
    model_dir = bento_dir / "models" / name / version
    try:
        metadata = yaml.safe_load((model_dir / "model.yaml").read_text())["metadata"] or {}
    except (OSError, yaml.YAMLError, TypeError, KeyError) as exc:
        raise ScoringError(f"{tag}'s model {served[0]} is not in {bento_dir / 'models'} ({exc})") from exc
    return load_model(model_dir, metadata, bento=tag, model_tag=served[0])


# --- the input -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """Rows to score: the model's inputs as columns, a key per row, and the time each predicts when known."""

    columns: Mapping[str, np.ndarray]
    keys: np.ndarray  # str, unique
    periods: np.ndarray | None  # datetime64, or None when the input has no time
    source: str
    keyed_by: str  # how the keys were made, in words

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, positions: np.ndarray) -> Batch:
        return Batch(
            {name: values[positions] for name, values in self.columns.items()},
            self.keys[positions],
            None if self.periods is None else self.periods[positions],
            self.source,
            self.keyed_by,
        )


def read_file(location: str, inputs: Inputs) -> tuple[pd.DataFrame, str]:
    """A CSV or Parquet file (a path, or a URL pyarrow reads: s3://, gs://...) and the SHA-256 of its bytes.

    As the validate stage reads the data: text features stay text ("01" is not 1), " clear" is "clear".
    """
    suffix = PurePosixPath(urlparse(location).path if "://" in location else location).suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise ScoringError(f"{location}: give a .csv or .parquet file")
    data = _read_bytes(location)
    try:
        if suffix == ".csv":
            text = {feature.name: str for feature in inputs.features if feature.type == "str"}
            frame = pd.read_csv(io.BytesIO(data), skipinitialspace=True, dtype=text)
        else:
            frame = pd.read_parquet(io.BytesIO(data))
    except (ValueError, OSError) as exc:
        raise InvalidInputError(f"{location} cannot be read as {suffix[1:]}: {exc}") from exc
    return frame, hashlib.sha256(data).hexdigest()


def _read_bytes(location: str) -> bytes:
    if "://" in location:
        import pyarrow.fs

        try:
            filesystem, path = pyarrow.fs.FileSystem.from_uri(location)
            with filesystem.open_input_stream(path) as stream:
                return bytes(stream.readall())
        except (OSError, ValueError) as exc:
            raise ScoringError(f"cannot read {location}: {exc}") from exc
    try:
        return Path(location).read_bytes()
    except OSError as exc:
        raise ScoringError(f"cannot read {location}: {exc.strerror or exc}") from exc


def problems(frame: pd.DataFrame, inputs: Inputs) -> list[str]:
    """What in `frame` breaks the model's contract: missing columns, else each bad column, else each broken rule.

    Columns beyond the model's inputs are ignored (a target, an id, the time).
    """
    missing = [name for name in inputs.names if name not in frame.columns]
    if missing:
        return [f"missing column(s) {', '.join(missing)} (the model's inputs are {', '.join(inputs.names)})"]
    found = [problem for feature in inputs.features if (problem := column_problem(frame[feature.name], feature))]
    return found or rule_problems(frame, inputs)


def column_problem(values: pd.Series, feature: Feature) -> str | None:
    """The first failures of one column against the service's own field type of `feature` (strict)."""
    name = f"column {feature.name} ({_expected(feature)})"
    missing = np.flatnonzero(values.isna().to_numpy())
    if missing.size:
        return f"{name}: {missing.size:,} missing values, the first in row {missing[0]}"
    adapter: TypeAdapter[list[Any]] = TypeAdapter(list[field_type(feature)], config=ConfigDict(strict=True))  # type: ignore[arg-type,misc]
    failures, first = 0, ""
    for start in range(0, len(values), _SLICE):
        try:
            adapter.validate_python(values.iloc[start : start + _SLICE].tolist())
        except ValidationError as exc:
            failures += exc.error_count()
            if not first:
                error = exc.errors()[0]
                first = f"row {start + int(error['loc'][0])} holds {plain(error['input'])!r}: {error['msg']}"
    if failures:
        return f"{name}: {failures:,} of {len(values):,} rows fail, the first: {first}"
    return None


def _expected(feature: Feature) -> str:
    kind = {"int": "whole numbers", "float": "numbers", "str": "text"}[feature.type]
    if feature.categories is not None:
        return f"{kind}, one of {', '.join(map(str, feature.categories))}"
    bounds = [f"at least {feature.min:g}" if feature.min is not None else "",
              f"at most {feature.max:g}" if feature.max is not None else "",
              f"multiples of {feature.step}" if feature.step else ""]  # fmt: skip
    return ", ".join([kind, *filter(None, bounds)])


def rule_problems(frame: pd.DataFrame, inputs: Inputs) -> list[str]:
    """The declared rules on features a row breaks, as the service words them for a record."""
    found = []
    columns = {name: frame[name].to_numpy() for name in inputs.names}
    for name, rule in inputs.rules.items():
        try:
            broken = np.flatnonzero(~np.asarray(expressions.evaluate(rule, columns), dtype=bool))
        except Exception as exc:
            found.append(f"the rule {name} ({rule}) cannot be checked on these rows: {exc}")
            continue
        if broken.size:
            first = int(broken[0])
            shown = ", ".join(
                f"{column}={plain(columns[column][first])!r}" for column in sorted(expressions.names(rule))
            )
            more = f" (and {broken.size - 1:,} more rows)" if broken.size > 1 else ""
            found.append(f"row {first} ({shown}) breaks the rule {name}: {rule}{more}")
    return found


def check(frame: pd.DataFrame, inputs: Inputs, source: str) -> None:
    """Refuse `frame` when it breaks the contract, naming every column or rule that does."""
    if frame.empty:
        raise NothingToScoreError(f"{source} holds no rows to score")
    found = problems(frame, inputs)
    if found:
        raise InvalidInputError(f"{source} breaks the model's input contract; nothing was written: " + "; ".join(found))


def batch_of(frame: pd.DataFrame, inputs: Inputs, *, source: str, key: Sequence[str] = (), digest: str = "") -> Batch:
    """`frame` checked against the contract, with its keys: the `key` columns, else the `timestamp` column (and the
    series columns), else each row's position with the first 12 hex digits of `digest` (the file's)."""
    check(frame, inputs, source)
    periods = _times(frame[TIME_COLUMN], source) if TIME_COLUMN in frame.columns else None
    names = list(key) or ([TIME_COLUMN, *inputs.series] if periods is not None else [])
    absent = [name for name in names if name not in frame.columns]
    if absent:
        raise ScoringError(f"--key names {', '.join(absent)}, which {source} lacks (it has {', '.join(frame.columns)})")
    if names:
        keys = _keys_of(frame, names, periods, source)
        keyed_by = " and ".join(names)
    else:
        tag = digest[:12] or "rows"
        keys = np.asarray([f"{tag}#{position}" for position in range(len(frame))], dtype=object)
        keyed_by = f"row position in the file (sha256 {tag}…; give --key to key rows by a column)"
    duplicated = np.flatnonzero(pd.Index(keys).duplicated(keep=False))
    if duplicated.size:
        first = keys[duplicated[0]]
        rows = np.flatnonzero(keys == first)[:2]
        raise InvalidInputError(
            f"{source}: rows {rows[0]} and {rows[1]} have the same key {first!r} ({keyed_by}), and "
            f"{duplicated.size:,} rows in all share a key: each row needs a key of its own (give --key); nothing was "
            "written"
        )
    columns = {name: frame[name].to_numpy() for name in inputs.names}
    return Batch(columns, keys, periods, source, keyed_by)


def _times(values: pd.Series, source: str) -> np.ndarray:
    stamps = pd.to_datetime(values, errors="coerce")
    if getattr(stamps.dt, "tz", None) is not None:
        stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
    bad = np.flatnonzero(stamps.isna().to_numpy())
    if bad.size:
        raise InvalidInputError(
            f"{source}: column {TIME_COLUMN} holds {bad.size:,} values that are not times, the first in row {bad[0]} "
            f"({plain(values.iloc[bad[0]])!r}); nothing was written"
        )
    result: np.ndarray = stamps.to_numpy(dtype="datetime64[us]")
    return result


def _keys_of(frame: pd.DataFrame, names: Sequence[str], periods: np.ndarray | None, source: str) -> np.ndarray:
    """`first|second=value|...`: the first key column's value, then each other one by name."""
    keys: np.ndarray | None = None
    for name in names:
        column = frame[name]
        missing = np.flatnonzero(column.isna().to_numpy())
        if missing.size:
            raise InvalidInputError(
                f"{source}: key column {name} is empty in {missing.size:,} rows, the first in row {missing[0]}; "
                "every row needs a key. Nothing was written"
            )
        if name == TIME_COLUMN and periods is not None:
            text = np.datetime_as_string(periods.astype("datetime64[s]")).astype(object)
        else:
            text = column.astype(str).to_numpy(dtype=object)
        keys = text if keys is None else keys + f"|{name}=" + text
    assert keys is not None  # at least one name
    return keys


# --- shards --------------------------------------------------------------------------------------------------------


def parse_shard(text: str) -> tuple[int, int]:
    """`INDEX/COUNT` (0 <= INDEX < COUNT): this run scores the rows whose position modulo COUNT is INDEX."""
    index, _, count = text.partition("/")
    try:
        parsed = int(index), int(count)
    except ValueError:
        parsed = -1, 0
    if not 0 <= parsed[0] < parsed[1]:
        raise ScoringError(f"--shard must be INDEX/COUNT with 0 <= INDEX < COUNT (e.g. 0/4), not '{text}'")
    return parsed


def shard(batch: Batch, index: int, count: int) -> Batch:
    """The rows whose position modulo `count` is `index`: shards are disjoint and cover the batch together, and
    keep their keys, so a shard's run and a run of the whole never write a row twice."""
    return batch if count == 1 else batch.take(np.arange(index, len(batch), count))


def check_chunk_rows(rows: int) -> int:
    if not 1 <= rows <= MAX_CHUNK_ROWS:
        raise ScoringError(f"--chunk-rows must be between 1 and {MAX_CHUNK_ROWS:,}, not {rows}")
    return rows


# --- scoring -------------------------------------------------------------------------------------------------------


class Sink(Protocol):
    """Where predictions go (`table.Writer`)."""

    def holds_any(self, model_version: str, bento: str) -> bool:
        """Whether any row of this model version and bento is written (else no chunk needs `existing`)."""
        ...

    def existing(self, keys: Sequence[str], model_version: str, bento: str) -> set[str]:
        """The keys of `keys` already written for this model version and bento."""
        ...

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Append `rows` in one transaction; rows already there (same key) are left as they are."""
        ...


@dataclass(frozen=True)
class Progress:
    done: int  # rows handled: written, or found written by an earlier run
    total: int
    added: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class ScoreResult:
    rows: int
    added: int  # rows this run wrote
    already: int  # rows an earlier run had written (skipped)
    chunks: int
    seconds: float


def score(
    model: ScoringModel,
    batch: Batch,
    sink: Sink,
    *,
    scored_at: dt.datetime,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: ProgressCallback | None = None,
) -> ScoreResult:
    """Score `batch` chunk by chunk and write each chunk's new rows to `sink` in one transaction."""
    lineage = model.lineage()
    version, bento = str(lineage["model_version"]), str(lineage["bento"])
    constant: dict[str, Any] = {**lineage, SOURCE: batch.source, SCORED_AT: scored_at}
    started = time.perf_counter()
    added = already = chunks = 0
    total = len(batch)
    try:
        resuming = sink.holds_any(version, bento)  # a first run asks nothing more: ON CONFLICT keeps it exact anyway
    except ScoringError as exc:
        raise StoppedError(f"{exc}. Nothing was written") from exc
    for start in range(0, total, chunk_rows):
        stop = min(start + chunk_rows, total)
        try:
            present = sink.existing(batch.keys[start:stop].tolist(), version, bento) if resuming else set()
            todo = np.arange(start, stop)
            if present:
                todo = todo[[key not in present for key in batch.keys[start:stop]]]
            if todo.size:
                sink.write(rows_of(model, batch, todo, constant))
        except (ScoringError, KeyboardInterrupt) as exc:
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
            raise StoppedError(
                f"{reason}. {start:,} of {total:,} rows were done before it stopped ({added:,} written by this run, "
                f"{already:,} already there); the chunk from row {start:,} was rolled back. Run the same command "
                "again to resume: rows already written are skipped"
            ) from exc
        added += int(todo.size)
        already += stop - start - int(todo.size)
        chunks += 1
        if progress is not None:
            progress(Progress(stop, total, added, time.perf_counter() - started))
    return ScoreResult(total, added, already, chunks, time.perf_counter() - started)


def rows_of(
    model: ScoringModel, batch: Batch, positions: np.ndarray, constant: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The predictions rows of `positions`: key, period, inputs, prediction, then the lineage in `constant`."""
    columns = {name: batch.columns[name][positions] for name in model.inputs.names}
    predictions = model.predictor.predict(columns)
    periods = [None] * len(positions) if batch.periods is None else batch.periods[positions].tolist()
    varying: dict[str, list[Any]] = {
        ROW_KEY: batch.keys[positions].tolist(),
        PERIOD: periods,
        **{name: values.tolist() for name, values in columns.items()},
        PREDICTION: predictions.tolist(),
    }
    names = list(varying)
    return [{**constant, **dict(zip(names, values, strict=True))} for values in zip(*varying.values(), strict=True)]
