"""The predictions table, in SQLite or PostgreSQL through SQLAlchemy.

Its columns: `row_key`, `period`, the model's inputs (typed as its contract types them), `prediction`, the lineage
(`model_name`, `model_version`, `bento`, `bento_model`, `run_id`, `data_hash`, `git_commit`, `trained_at`,
`backend`), `source` and `scored_at`; its primary key is (row_key, model_version, bento). A table that exists is
checked before anything is written: a missing, extra or mistyped column, or no such key, is refused by name. Rows
are appended one chunk per transaction with INSERT ... ON CONFLICT DO NOTHING (in PostgreSQL from a temporary table
the chunk is copied into, unless the role may not create one): history is kept, a row is never overwritten, and a
retried chunk adds nothing twice.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine

from forkcast.batch.score import (
    KEY,
    LINEAGE,
    PERIOD,
    PREDICTION,
    ROW_KEY,
    SCORED_AT,
    SOURCE,
    ScoringError,
    WriteError,
)
from forkcast.data.declaration import Inputs

URL_ENV = "FORKCAST_SCORE_DATABASE_URL"  # where predictions go (it may hold a password: never printed)
DEFAULT_URL = "sqlite:///outputs/predictions.db"
DEFAULT_TABLE = "predictions"
URL_FORMS = "sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_KEYS_PER_QUERY = 5_000  # within every dialect's limit of bound parameters
_TYPES: dict[str, type[sa.types.TypeEngine[Any]]] = {"int": sa.BigInteger, "float": sa.Double, "str": sa.Text}
# The family a column's type must belong to, whatever the dialect calls it (BIGINT/INTEGER, DOUBLE/REAL...).
_FAMILIES: tuple[type[sa.types.TypeEngine[Any]], ...] = (sa.Integer, sa.Float, sa.String, sa.DateTime)
# A period in SQLite as 2011-11-07 08:00:00, not SQLAlchemy's default 2011-11-07 08:00:00.000000: what people type.
_PERIOD = sa.DateTime().with_variant(
    sqlite.DATETIME(  # type: ignore[no-untyped-call]
        storage_format="%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d",
        regexp=r"(\d+)-(\d+)-(\d+) (\d+):(\d+):(\d+)",
    ),
    "sqlite",
)


def parse_url(text: str) -> URL:
    """A SQLAlchemy URL of SQLite (a file) or PostgreSQL (through psycopg); anything else is refused."""
    try:
        url = sa.make_url(text.strip())
    except sa.exc.ArgumentError as exc:
        raise ScoringError(
            f"the database URL (not shown: it may hold a password) is not a URL: give {URL_FORMS}"
        ) from exc
    backend, driver = url.get_backend_name(), url.get_driver_name()
    if backend in ("postgres", "postgresql") and driver in ("", "psycopg", "postgresql", "postgres"):
        return url.set(drivername="postgresql+psycopg")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        if url.database in (None, "", ":memory:"):
            raise ScoringError(f"{shown(url)} is a database in memory, lost at exit: give a file, sqlite:///PATH")
        return url
    raise ScoringError(f"{shown(url)}: only SQLite and PostgreSQL (through psycopg) are supported: give {URL_FORMS}")


def shown(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def define(name: str, inputs: Inputs) -> sa.Table:
    """The table for `inputs`' predictions; `name` may be `schema.table`."""
    schema, _, table_name = name.rpartition(".")
    for part in filter(None, (schema, table_name)):
        if not _NAME.fullmatch(part):
            raise ScoringError(f"--table '{name}': a name is letters, digits and _, not starting with a digit")
    fixed = {ROW_KEY, PERIOD, PREDICTION, *LINEAGE, SOURCE, SCORED_AT}
    clashes = [feature.name for feature in inputs.features if feature.name in fixed]
    if clashes:
        raise ScoringError(f"the model's input(s) {', '.join(clashes)} have the name of a predictions column")
    return sa.Table(
        table_name,
        sa.MetaData(),
        sa.Column(ROW_KEY, sa.Text, nullable=False),
        sa.Column(PERIOD, _PERIOD),
        *(sa.Column(feature.name, _TYPES[feature.type]) for feature in inputs.features),
        sa.Column(PREDICTION, sa.Double, nullable=False),
        *(sa.Column(column, sa.Text, nullable=column not in KEY) for column in LINEAGE),
        sa.Column(SOURCE, sa.Text),
        sa.Column(SCORED_AT, sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(*KEY, name=f"{table_name}_key"),
        schema=schema or None,
    )


def mismatch(connection: Connection, table: sa.Table) -> list[str] | None:
    """What in the database's `table` differs from `table`'s definition; None when there is no such table."""
    inspector = sa.inspect(connection)
    if not inspector.has_table(table.name, schema=table.schema):
        return None
    found = {column["name"]: column["type"] for column in inspector.get_columns(table.name, schema=table.schema)}
    dialect = connection.dialect
    missing = [
        f"{column.name} ({column.type.compile(dialect=dialect)})"
        for column in table.columns
        if column.name not in found
    ]
    extra = [name for name in found if name not in table.columns]
    mistyped = [
        f"{column.name} is {found[column.name]}, not {column.type.compile(dialect=dialect)}"
        for column in table.columns
        if column.name in found and not _same_family(found[column.name], column.type)
    ]
    problems = [f"missing column(s) {', '.join(missing)}"] if missing else []
    problems += [f"extra column(s) {', '.join(extra)}"] if extra else []
    problems += mistyped
    if not missing and not _has_key(inspector, table):
        problems.append(f"no primary key or unique index on ({', '.join(KEY)}): a retried run would write rows twice")
    return problems


def _same_family(found: Any, expected: sa.types.TypeEngine[Any]) -> bool:
    family = next(kind for kind in _FAMILIES if isinstance(expected, kind))
    return isinstance(found, family)


def _has_key(inspector: Any, table: sa.Table) -> bool:
    wanted = set(KEY)
    keys = [inspector.get_pk_constraint(table.name, schema=table.schema).get("constrained_columns") or []]
    keys += [unique["column_names"] for unique in inspector.get_unique_constraints(table.name, schema=table.schema)]
    keys += [
        index["column_names"] for index in inspector.get_indexes(table.name, schema=table.schema) if index["unique"]
    ]
    return any(set(columns) == wanted for columns in keys)


class Writer:
    """Appends predictions to one table (a `score.Sink`)."""

    def __init__(self, engine: Engine, table: sa.Table, url: URL) -> None:
        self.engine = engine
        self.table = table
        self.url = url
        self.where = f"table {_qualified(table)} of {shown(url)}"
        dialect = engine.dialect.name
        insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
        self._insert = insert(table).on_conflict_do_nothing(index_elements=list(KEY))
        self._copy = dialect == "postgresql"  # until a role without the TEMP privilege says otherwise

    def create(self) -> bool:
        """Create the table when it does not exist (another run may create it at the same time); True if created."""
        try:
            with self.engine.begin() as connection:
                if mismatch(connection, self.table) is not None:
                    return False
                self.table.create(connection)
                return True
        except sa.exc.SQLAlchemyError as exc:
            with self.engine.connect() as connection:  # created by another shard meanwhile: fine if it fits
                problems = mismatch(connection, self.table)
            if problems is None:
                raise ScoringError(f"cannot create {self.where}: {_first_line(exc)}") from exc
            _refuse(problems, self.where)
            return False

    def holds_any(self, model_version: str, bento: str) -> bool:
        column = self.table.c
        query = sa.select(column[ROW_KEY]).where(column["model_version"] == model_version, column["bento"] == bento)
        try:
            with self.engine.connect() as connection:
                return connection.execute(query.limit(1)).first() is not None
        except sa.exc.SQLAlchemyError as exc:
            raise WriteError(f"reading {self.where} failed: {_first_line(exc)}") from exc

    def existing(self, keys: Sequence[str], model_version: str, bento: str) -> set[str]:
        column = self.table.c
        found: set[str] = set()
        try:
            with self.engine.connect() as connection:
                for part in _parts(keys, _KEYS_PER_QUERY):
                    query = sa.select(column[ROW_KEY]).where(
                        column["model_version"] == model_version, column["bento"] == bento, column[ROW_KEY].in_(part)
                    )
                    found.update(connection.scalars(query))
        except sa.exc.SQLAlchemyError as exc:
            raise WriteError(f"reading {self.where} failed: {_first_line(exc)}") from exc
        return found

    def write(self, rows: list[dict[str, Any]]) -> None:
        """One chunk, in one transaction: all of its new rows, or none."""
        if self._copy:
            import psycopg  # COPY goes through the driver itself

            try:
                self._write(rows, lambda connection: _copy_then_insert(connection, self.table, rows), psycopg.Error)
                return
            except WriteError as exc:
                if not isinstance(exc.__cause__, psycopg.errors.InsufficientPrivilege):
                    raise
                self._copy = False  # no TEMP on this database: the INSERT, which needs none, from now on
        self._write(rows, lambda connection: connection.execute(self._insert, rows))

    def _write(self, rows: list[dict[str, Any]], how: Callable[[Connection], object], *errors: type[Exception]) -> None:
        failures: tuple[type[Exception], ...] = (sa.exc.SQLAlchemyError, *errors)
        try:
            with self.engine.begin() as connection:
                how(connection)
        except failures as exc:
            raise WriteError(f"writing {len(rows):,} rows to {self.where} failed: {_first_line(exc)}") from exc

    def count(self, model_version: str | None = None, bento: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(self.table)
        if model_version is not None:
            query = query.where(self.table.c["model_version"] == model_version)
        if bento is not None:
            query = query.where(self.table.c["bento"] == bento)
        with self.engine.connect() as connection:
            return int(connection.scalar(query) or 0)


def connect(url: URL, name: str, inputs: Inputs) -> Writer:
    """A writer to `name` in `url`, once the database answers and a table of that name, if any, fits `inputs`.

    Nothing is created: a new SQLite file or table comes with `Writer.create`, once the input passed its checks.
    """
    table = define(name, inputs)
    where = f"table {_qualified(table)} of {shown(url)}"
    sqlite_file = Path(url.database or "") if url.get_backend_name() == "sqlite" else None
    if sqlite_file is not None and not sqlite_file.parent.is_dir():
        raise ScoringError(f"cannot open {shown(url)}: the directory {sqlite_file.parent} does not exist")
    try:
        engine = sa.create_engine(url, **({"connect_args": {"timeout": 30}} if sqlite_file is not None else {}))
    except ImportError as exc:
        raise ScoringError(f"{shown(url)} needs a driver that is not installed: {exc}") from exc
    writer = Writer(engine, table, url)
    if sqlite_file is not None and not sqlite_file.exists():
        return writer  # connecting would create the file
    try:
        with engine.connect() as connection:
            problems = mismatch(connection, table)
    except sa.exc.SQLAlchemyError as exc:
        raise ScoringError(f"cannot connect to {shown(url)}: {_first_line(exc)}; check {URL_ENV}") from exc
    if problems:
        _refuse(problems, where)
    return writer


def _copy_then_insert(connection: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL: COPY the chunk into a temporary table, then INSERT ... ON CONFLICT DO NOTHING from it. Twice the
    rows per second of a multi-row INSERT (benchmarks/scoring.py), with the same outcome: a row already there is
    kept as it is."""
    from psycopg import sql

    names = [column.name for column in table.columns]
    target = sql.Identifier(*((table.schema,) if table.schema else ()), table.name)
    staging = sql.Identifier("forkcast_chunk")
    columns = sql.SQL(", ").join(sql.Identifier(name) for name in names)
    key = sql.SQL(", ").join(sql.Identifier(name) for name in KEY)
    driver = connection.connection.driver_connection
    with driver.cursor() as cursor:  # type: ignore[union-attr]
        cursor.execute(
            sql.SQL("CREATE TEMPORARY TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(staging, target)
        )
        with cursor.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(staging, columns)) as copy:
            for row in rows:
                copy.write_row([row[name] for name in names])
        cursor.execute(
            sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT ({}) DO NOTHING").format(
                target, columns, columns, staging, key
            )
        )


def _refuse(problems: list[str], where: str) -> None:
    raise ScoringError(
        f"{where} does not fit this model's predictions: {'; '.join(problems)}. Score into another table (--table "
        "NAME), or change this one to match"
    )


def _qualified(table: sa.Table) -> str:
    return f"{table.schema}.{table.name}" if table.schema else table.name


def _first_line(exc: Exception) -> str:
    original = getattr(exc, "orig", None)
    return (str(original) if original is not None else str(exc)).strip().splitlines()[0]


def _parts(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
