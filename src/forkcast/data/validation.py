"""The validate stage: run every check of the raw-data schema (derived from `dataset.yaml`) and write a report.

Unlike pandera's `schema.validate`, which stops at the first broken type, this runs each check on its own and
measures the share of rows that pass it, so the report shows every problem at once. A value that is missing or of
the wrong type fails its type check and every other check that reads it; columns the declaration does not know
are reported, with a hint when one looks like a missing declared column under another name. A check passes when
its pass rate reaches its tolerance (`validate.min_pass_rate` in params.yaml); the stage passes when the share of
passing checks reaches `validate.min_share_of_checks_passed`.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa

from forkcast import atomic
from forkcast.config import ConfigError, ValidateParams
from forkcast.data import calendar
from forkcast.data.declaration import ColumnType, Dataset
from forkcast.data.schema import RowCheck, raw_schema, row_checks, value_checks
from forkcast.values import plain


@dataclass(frozen=True)
class CheckResult:
    name: str
    description: str
    rows_checked: int
    rows_failed: int
    min_pass_rate: float
    failure_samples: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None  # set when the check could not run at all

    @property
    def pass_rate(self) -> float:
        if self.error is not None:
            return 0.0
        if self.rows_checked == 0:
            return 1.0
        return 1.0 - self.rows_failed / self.rows_checked

    @property
    def passed(self) -> bool:
        return self.error is None and self.pass_rate >= self.min_pass_rate

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "pass_rate": round(self.pass_rate, 6), "passed": self.passed}


@dataclass(frozen=True)
class ValidationReport:
    source: str
    rows: int
    checks: list[CheckResult]
    rows_passing_all_checks: int
    min_share_of_checks_passed: float
    time: dict[str, Any] | None = None  # the span of the times, and the periods missing in it (`time_coverage`)

    @property
    def checks_passed(self) -> int:
        return sum(check.passed for check in self.checks)

    @property
    def share_of_checks_passed(self) -> float:
        return self.checks_passed / len(self.checks) if self.checks else 0.0

    @property
    def share_of_rows_passed(self) -> float:
        return self.rows_passing_all_checks / self.rows if self.rows else 0.0

    @property
    def passed(self) -> bool:
        return self.share_of_checks_passed >= self.min_share_of_checks_passed

    @property
    def failed_checks(self) -> list[CheckResult]:
        return [check for check in self.checks if not check.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "passed": self.passed,
            "summary": {
                "rows": self.rows,
                "checks": len(self.checks),
                "checks_passed": self.checks_passed,
                "share_of_checks_passed": round(self.share_of_checks_passed, 6),
                "min_share_of_checks_passed": self.min_share_of_checks_passed,
                "rows_passing_all_checks": self.rows_passing_all_checks,
                "share_of_rows_passed": round(self.share_of_rows_passed, 6),
            },
            "time": self.time,
            "checks": [check.to_dict() for check in self.checks],
        }


def share_of_checks_passed(report_json: Path) -> float | None:
    """The share of checks that passed, as a written report (`ValidationReport.to_dict`) says; None when there is no
    readable report there."""
    try:
        share = (atomic.read_json(report_json).get("summary") or {}).get("share_of_checks_passed")
        return float(share) if share is not None else None
    except (OSError, ValueError, TypeError, AttributeError):
        return None


class _Checker:
    """Collects check outcomes over one table, tracking which rows fail anything."""

    def __init__(self, table: pd.DataFrame, params: ValidateParams) -> None:
        self.table = table
        self.params = params
        self.results: list[CheckResult] = []
        self.row_failed = np.zeros(len(table), dtype=bool)

    def tolerance(self, name: str) -> float:
        return self.params.min_pass_rate.get(name, self.params.default_min_pass_rate)

    def add_error(self, name: str, description: str, error: str) -> None:
        self.row_failed[:] = True  # a check that cannot run vouches for no row
        self.results.append(CheckResult(name, description, len(self.table), 0, self.tolerance(name), error=error))

    def add(self, name: str, description: str, passes: pd.Series, sample_columns: list[str] | None = None) -> None:
        failing = ~passes.to_numpy(dtype=bool)
        self.row_failed |= failing
        samples = self._samples(failing, sample_columns)
        self.results.append(
            CheckResult(name, description, len(self.table), int(failing.sum()), self.tolerance(name), samples)
        )

    def _samples(self, failing: np.ndarray, columns: list[str] | None) -> list[dict[str, Any]]:
        positions = np.flatnonzero(failing)[: self.params.failure_samples]
        present = [c for c in (columns or list(self.table.columns)) if c in self.table.columns]
        samples = []
        for position in positions:
            values = self.table.iloc[position][present]
            # +2: one for the header line, one because people count lines from 1.
            samples.append({"line": int(position) + 2, **{c: plain(values[c]) for c in present}})
        return samples


def read_raw(path: Path) -> pd.DataFrame:
    """Read every column as text: types are checked, not assumed."""
    return pd.read_csv(path, dtype=str, skipinitialspace=True)


def coerce(raw: pd.Series, kind: ColumnType) -> tuple[pd.Series, pd.Series]:
    """The column as its declared type, and a mask of values that are present but not of that type."""
    if kind == "str":
        return raw, pd.Series(False, index=raw.index)
    numbers = pd.to_numeric(raw, errors="coerce")
    bad = raw.notna() & ~np.isfinite(numbers.fillna(0.0))  # text, and "inf"
    bad |= raw.notna() & numbers.isna()
    if kind == "int":
        bad |= numbers.notna() & (numbers != np.floor(numbers))
    return numbers.where(~bad), bad


def validate_table(table: pd.DataFrame, params: ValidateParams, dataset: Dataset, source: str) -> ValidationReport:
    """Run every check of the declared schema on `table` (read as text), each on its own."""
    known_checks = check_names(dataset)
    unknown = sorted(set(params.min_pass_rate) - set(known_checks))
    if unknown:
        raise ConfigError(
            f"params.yaml: validate.min_pass_rate names unknown checks {unknown}; "
            f"known checks: {', '.join(known_checks)}"
        )
    schema = raw_schema(dataset)
    checker = _Checker(table, params)
    if len(table):
        checker.add("table.not_empty", "the file has at least one data row", pd.Series(True, index=table.index))
    else:
        checker.add_error("table.not_empty", "the file has at least one data row", "the file has a header but no rows")
    hints = lookalikes(table, dataset)
    _known_columns(checker, table, dataset, hints)

    coerced = pd.DataFrame(index=table.index)
    usable: dict[str, pd.Series] = {}  # per column: the rows whose value is present and of the declared type
    for name, column in dataset.file_columns.items():
        pandera_column = schema.columns[name]
        if name not in table.columns:
            hint = _hint_for_missing(name, hints)
            checker.add_error(f"{name}.present", f"column '{name}' exists", f"column '{name}' is missing{hint}")
            for suffix, description in _column_checks(pandera_column, column.type):
                checker.add_error(f"{name}.{suffix}", description, f"column '{name}' is missing")
            continue
        checker.add(f"{name}.present", f"column '{name}' exists", pd.Series(True, index=table.index))
        raw = table[name]
        checker.add(f"{name}.not_null", "no missing values", raw.notna(), [name])
        values, wrong_type = coerce(raw, column.type)
        checker.add(f"{name}.dtype", f"values are {_TYPE_WORDS[column.type]}", ~wrong_type, [name])
        coerced[name] = values
        usable[name] = values.notna()
        for check in pandera_column.checks:
            try:
                output = check(values.dropna()).check_output
            except Exception as exc:  # a check may raise on odd data: report it, never crash
                checker.add_error(f"{name}.{check.name}", check.error or check.name, f"the check raised {exc!r}")
                continue
            # A missing or mistyped value is not one of the allowed values: it fails here too.
            outcome = _per_row(output, values.index) & usable[name]
            checker.add(f"{name}.{check.name}", check.error or check.name, outcome, [name])

    key = list(dataset.unique_key)
    unique = RowCheck(
        "rows.one_per_period", f"no two rows share the same {' and '.join(key)}", tuple(key),
        lambda df: ~df.duplicated(subset=key, keep=False),
    )  # fmt: skip
    for check in [unique, *row_checks(dataset)]:
        _row_check(checker, check=check, coerced=coerced, usable=usable)

    return ValidationReport(
        source=source,
        rows=len(table),
        checks=checker.results,
        rows_passing_all_checks=int((~checker.row_failed).sum()) if len(table) else 0,
        min_share_of_checks_passed=params.min_share_of_checks_passed,
        time=time_coverage(coerced, dataset) if len(table) else None,
    )


_TYPE_WORDS = {"int": "whole numbers", "float": "finite numbers", "str": "text"}


def _column_checks(column: pa.Column, kind: ColumnType) -> list[tuple[str, str]]:
    return [("not_null", "no missing values"), ("dtype", f"values are {_TYPE_WORDS[kind]}")] + [
        (check.name, check.error or check.name) for check in column.checks
    ]


def _row_check(
    checker: _Checker,
    *,
    check: RowCheck,
    coerced: pd.DataFrame,
    usable: dict[str, pd.Series],
) -> None:
    name, description, columns = check.name, check.description, check.columns
    missing = [column for column in columns if column not in usable]
    if missing:
        checker.add_error(name, description, f"needs the missing column(s) {', '.join(missing)}")
        return
    try:
        outcome = check.run(coerced)
    except Exception as exc:  # a rule may raise on odd data: report it, never crash
        checker.add_error(name, description, f"the check raised {type(exc).__name__}: {exc}")
        return
    vouched = pd.Series(True, index=coerced.index)
    for column in columns:  # a row with a missing or mistyped value in a column the check reads fails it
        vouched &= usable[column]
    checker.add(
        name, description, _per_row(getattr(outcome, "check_output", outcome), coerced.index) & vouched, list(columns)
    )


def _known_columns(checker: _Checker, table: pd.DataFrame, dataset: Dataset, hints: dict[str, list[str]]) -> None:
    description = "every column of the file is declared in dataset.yaml"
    unknown = [str(name) for name in table.columns if name not in dataset.file_columns]
    if not unknown:
        checker.add("table.known_columns", description, pd.Series(True, index=table.index))
        return
    fits = [f"'{name}' could be {' or '.join(repr(m) for m in hints[name])}" for name in unknown if hints.get(name)]
    problem = f"the declaration does not know the column(s) {', '.join(repr(name) for name in unknown)}"
    if fits:
        problem += f" ({'; '.join(fits)} under another name)"
    problem += ": declare them (role: ignored to keep them out of the model) or rename them"
    tolerance = checker.tolerance("table.known_columns")
    checker.results.append(CheckResult("table.known_columns", description, len(table), 0, tolerance, error=problem))


def lookalikes(table: pd.DataFrame, dataset: Dataset) -> dict[str, list[str]]:
    """For each undeclared column, the missing declared columns it may be: a similar name, or values that fit."""
    missing = [name for name in dataset.file_columns if name not in table.columns]
    found: dict[str, list[str]] = {}
    for name in (str(column) for column in table.columns if column not in dataset.file_columns):
        matches = [
            declared for declared in missing if _similar(name, declared) or _fits(table[name], dataset, declared)
        ]
        if matches:
            found[name] = matches
    return found


def _similar(name: str, declared: str) -> bool:
    return difflib.SequenceMatcher(None, name.lower(), declared.lower()).ratio() >= 0.75


def _fits(raw: pd.Series, dataset: Dataset, declared: str) -> bool:
    """The values are of the declared column's type and within its values, nearly all of them."""
    column = dataset.columns[declared]
    values, _ = coerce(raw, column.type)
    present = values.dropna()
    if len(raw) == 0 or len(present) < 0.95 * len(raw):
        return False
    for check in value_checks(column):
        try:
            passing = _per_row(check(present).check_output, present.index)
        except Exception:
            return False
        if passing.mean() < 0.95:
            return False
    return True


def _hint_for_missing(name: str, hints: dict[str, list[str]]) -> str:
    candidates = [column for column, declared in hints.items() if name in declared]
    if not candidates:
        return ""
    listed = " or ".join(repr(column) for column in candidates)
    return f"; the file's {listed} could be it under another name: rename it, or correct the declaration"


def time_coverage(coerced: pd.DataFrame, dataset: Dataset, shown: int = 5) -> dict[str, Any] | None:
    """The span of the data's times, how many periods it should hold, and its gaps (the longest first)."""
    if any(column not in coerced.columns for column in dataset.time.columns):
        return None
    stamps = calendar.timestamps(coerced, dataset.time).dropna()
    if stamps.empty:
        return None
    frequency = dataset.time.frequency
    step = pd.Timedelta(minutes=frequency.minutes)
    distinct = pd.Series(stamps.unique()).sort_values(ignore_index=True)
    first, last = distinct.iloc[0], distinct.iloc[-1]
    expected = int((last - first) / step) + 1
    coverage: dict[str, Any] = {
        "first": first.isoformat(), "last": last.isoformat(), "frequency": frequency.period,
        "expected_periods": expected, "periods": len(distinct), "missing_periods": max(expected - len(distinct), 0),
    }  # fmt: skip
    jumps = distinct.diff()
    starts = jumps[jumps > step].index
    gaps = [
        {
            "after": distinct.iloc[position - 1].isoformat(),
            "before": distinct.iloc[position].isoformat(),
            "missing": int(jumps.iloc[position] / step) - 1,
        }
        for position in starts
    ]
    coverage["gaps"] = len(gaps)
    coverage["longest_gaps"] = sorted(gaps, key=lambda gap: -gap["missing"])[:shown]
    return coverage


def _per_row(output: Any, index: pd.Index) -> pd.Series:
    """A check's outcome for every row (False where it has none); a scalar outcome applies to all."""
    if isinstance(output, pd.Series):
        return output.reindex(index, fill_value=False).fillna(False).astype(bool)
    return pd.Series(bool(output), index=index)


def check_names(dataset: Dataset) -> list[str]:
    """Every check the report lists, in report order (also the keys of `validate.min_pass_rate`)."""
    schema = raw_schema(dataset)
    names = ["table.not_empty", "table.known_columns"]
    for name, column in dataset.file_columns.items():
        names += [f"{name}.present"] + [
            f"{name}.{suffix}" for suffix, _ in _column_checks(schema.columns[name], column.type)
        ]
    return [*names, "rows.one_per_period", *(check.name for check in row_checks(dataset))]


def unreadable_report(source: str, problem: str, params: ValidateParams) -> ValidationReport:
    result = CheckResult("table.readable_csv", "the file is a readable CSV table", 0, 0, 1.0, error=problem)
    return ValidationReport(source, 0, [result], 0, params.min_share_of_checks_passed)


def validate_file(path: Path, params: ValidateParams, dataset: Dataset) -> ValidationReport:
    try:
        table = read_raw(path)
    except FileNotFoundError:
        return unreadable_report(str(path), f"{path} does not exist (run `dvc pull`?)", params)
    except pd.errors.EmptyDataError:
        return unreadable_report(str(path), f"{path} is empty: no header, no rows", params)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        return unreadable_report(str(path), f"{path} is not a readable CSV: {exc}".strip(), params)
    return validate_table(table, params, dataset, str(path))


def render_markdown(report: ValidationReport) -> str:
    verdict = "PASSED" if report.passed else "FAILED"
    lines = [
        f"# Data validation: {verdict}",
        "",
        f"Source: `{report.source}`",
        "",
        "| rows | checks passed | share of checks passed | required | rows passing every check |",
        "| ---: | ---: | ---: | ---: | ---: |",
        f"| {report.rows:,} | {report.checks_passed} / {len(report.checks)} "
        f"| {report.share_of_checks_passed:.1%} | {report.min_share_of_checks_passed:.1%} "
        f"| {report.rows_passing_all_checks:,} ({report.share_of_rows_passed:.2%}) |",
        "",
    ]
    if report.time:
        lines += [coverage_line(report.time), ""]
    failed = report.failed_checks
    if failed:
        lines += ["## Failed checks", ""]
        for check in failed:
            lines.append(f"### `{check.name}`: {check.description}")
            lines.append("")
            if check.error:
                lines.append(f"Could not run: {check.error}.")
            else:
                lines.append(
                    f"{check.rows_failed:,} of {check.rows_checked:,} rows fail "
                    f"(pass rate {check.pass_rate:.2%}, required {check.min_pass_rate:.2%}). Sample:"
                )
                lines += ["", *_sample_table(check.failure_samples)]
            lines.append("")
    lines += [
        "## All checks",
        "",
        "| check | rule | pass rate | required | result |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for check in report.checks:
        status = "pass" if check.passed else ("**error**" if check.error else "**FAIL**")
        rule = check.description.replace("|", "\\|")
        lines.append(f"| `{check.name}` | {rule} | {check.pass_rate:.2%} | {check.min_pass_rate:.2%} | {status} |")
    return "\n".join(lines) + "\n"


def coverage_line(time: dict[str, Any]) -> str:
    """`Times: 2011-01-01 00:00 to 2011-12-31 23:00, 8,645 of 8,760 hours; 115 missing in 30 gaps (longest: ...)`."""
    periods = f"{time['frequency']}s"
    line = (
        f"Times: {time['first'][:16].replace('T', ' ')} to {time['last'][:16].replace('T', ' ')}, "
        f"{time['periods']:,} of {time['expected_periods']:,} {periods}"
    )
    if not time["missing_periods"]:
        return line + ", none missing."
    longest = time["longest_gaps"][0]
    return (
        f"{line}; {time['missing_periods']:,} missing in {time['gaps']:,} gap(s), the longest "
        f"{longest['missing']:,} {periods} after {longest['after'][:16].replace('T', ' ')}."
    )


def _sample_table(samples: list[dict[str, Any]]) -> list[str]:
    if not samples:
        return []
    columns = list(samples[0])
    rows = [f"| {' | '.join(columns)} |", f"|{' --- |' * len(columns)}"]
    rows += [f"| {' | '.join(_cell(sample[c]) for c in columns)} |" for sample in samples]
    return rows


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|")  # a pipe would split the Markdown table cell


def write_report(report: ValidationReport, json_path: Path, markdown_path: Path) -> None:
    atomic.write_json(json_path, report.to_dict())
    atomic.write_text(markdown_path, render_markdown(report))
