"""The validate stage: run every check of the raw-data schema and write a report.

Unlike `RawHourly.validate`, which stops at the first broken type, this runs each
check on its own and measures the share of rows that pass it, so the report shows
every problem at once. A check passes when its pass rate reaches its tolerance
(`validate.min_pass_rate` in params.yaml); the stage passes when the share of
passing checks reaches `validate.min_share_of_checks_passed`.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa

from forkcast import atomic
from forkcast.config import ConfigError, ValidateParams
from forkcast.data.schema import RawHourly, month_matches_day


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
            "checks": [check.to_dict() for check in self.checks],
        }


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
            samples.append({"line": int(position) + 2, **{c: _plain(values[c]) for c in present}})
        return samples


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def read_raw(path: Path) -> pd.DataFrame:
    """Read every column as text: types are checked, not assumed."""
    return pd.read_csv(path, dtype=str, skipinitialspace=True)


def _coerce(raw: pd.Series, dtype: str) -> tuple[pd.Series, pd.Series]:
    """Return the coerced column and a mask of values that are present but not of the type."""
    if dtype.startswith("str"):
        return raw, pd.Series(False, index=raw.index)
    numbers = pd.to_numeric(raw, errors="coerce")
    bad = raw.notna() & numbers.isna()
    if dtype.startswith("int"):
        fractional = numbers.notna() & (numbers != np.floor(numbers))
        bad |= fractional
        numbers = numbers.where(~fractional)
    return numbers, bad


def validate_table(table: pd.DataFrame, params: ValidateParams, start_date: dt.date, source: str) -> ValidationReport:
    schema = RawHourly.to_schema()
    unknown = sorted(set(params.min_pass_rate) - set(check_names(schema)))
    if unknown:
        raise ConfigError(
            f"params.yaml: validate.min_pass_rate names unknown checks {unknown}; "
            f"known checks: {', '.join(check_names(schema))}"
        )
    checker = _Checker(table, params)
    if len(table):
        checker.add("table.not_empty", "the file has at least one data row", pd.Series(True, index=table.index))
    else:
        checker.add_error("table.not_empty", "the file has at least one data row", "the file has a header but no rows")
    coerced = pd.DataFrame(index=table.index)

    for name, column in schema.columns.items():
        if name not in table.columns:
            checker.add_error(f"{name}.present", f"column '{name}' exists", f"column '{name}' is missing")
            for suffix, description in _column_checks(column):
                checker.add_error(f"{name}.{suffix}", description, f"column '{name}' is missing")
            continue
        checker.add(f"{name}.present", f"column '{name}' exists", pd.Series(True, index=table.index))
        raw = table[name]
        checker.add(f"{name}.not_null", "no missing values", raw.notna(), [name])
        values, wrong_type = _coerce(raw, str(column.dtype))
        checker.add(f"{name}.dtype", f"values are {column.dtype}", ~wrong_type, [name])
        coerced[name] = values
        for check in column.checks:
            try:
                output = check(values.dropna()).check_output
            except Exception as exc:  # a custom check may raise on odd data: report it, never crash
                checker.add_error(f"{name}.{check.name}", check.error or check.name, f"the check raised {exc!r}")
                continue
            outcome = _per_row(output, values.index)
            checker.add(f"{name}.{check.name}", check.error or check.name, outcome, [name])

    complete = coerced.notna().all(axis=1)  # rows with a missing or mistyped value fail those checks
    _table_checks(checker, schema, coerced, complete, start_date)

    return ValidationReport(
        source=source,
        rows=len(table),
        checks=checker.results,
        rows_passing_all_checks=int((~checker.row_failed).sum()) if len(table) else 0,
        min_share_of_checks_passed=params.min_share_of_checks_passed,
    )


def _column_checks(column: pa.Column) -> list[tuple[str, str]]:
    return [("not_null", "no missing values"), ("dtype", f"values are {column.dtype}")] + [
        (check.name, check.error or check.name) for check in column.checks
    ]


def _table_checks(
    checker: _Checker, schema: pa.DataFrameSchema, coerced: pd.DataFrame, complete: pd.Series, start_date: dt.date
) -> None:
    unique = list(schema.unique or [])
    row_checks: list[tuple[str, str, Callable[[pd.DataFrame], pd.Series]]] = [
        (
            "rows.one_per_hour",
            f"no two rows share the same {' and '.join(unique)}",
            lambda df: ~df.duplicated(subset=unique, keep=False),
        ),
        *[(f"rows.{c.name}", (c.description or c.name).strip(), c) for c in schema.checks],
        (
            "rows.month_matches_day",
            f"the month name agrees with the date of `day` (day 1 = {start_date})",
            lambda df: month_matches_day(df, start_date),
        ),
    ]
    for name, description, run in row_checks:
        try:
            outcome = run(coerced)
        except (KeyError, pa.errors.SchemaError) as exc:  # pandera wraps a check's KeyError
            checker.add_error(name, description, f"needs a missing column: {exc}")
            continue
        except Exception as exc:  # a custom check may raise on odd data: report it, never crash
            checker.add_error(name, description, f"the check raised {exc!r}")
            continue
        outcome = _per_row(getattr(outcome, "check_output", outcome), coerced.index)
        checker.add(name, description, outcome | ~complete)


def _per_row(output: Any, index: pd.Index) -> pd.Series:
    """A check's outcome for every row: a scalar outcome (a check on the whole column) applies to all."""
    if isinstance(output, pd.Series):
        return output.reindex(index, fill_value=True).astype(bool)
    return pd.Series(bool(output), index=index)


def check_names(schema: pa.DataFrameSchema | None = None) -> list[str]:
    """Every check the report lists, in report order (also the keys of `validate.min_pass_rate`)."""
    schema = schema or RawHourly.to_schema()
    names = ["table.not_empty"]
    for name, column in schema.columns.items():
        names += [f"{name}.present"] + [f"{name}.{suffix}" for suffix, _ in _column_checks(column)]
    names += ["rows.one_per_hour"] + [f"rows.{c.name}" for c in schema.checks] + ["rows.month_matches_day"]
    return names


def unreadable_report(source: str, problem: str, params: ValidateParams) -> ValidationReport:
    result = CheckResult("table.readable_csv", "the file is a readable CSV table", 0, 0, 1.0, error=problem)
    return ValidationReport(source, 0, [result], 0, params.min_share_of_checks_passed)


def validate_file(path: Path, params: ValidateParams, start_date: dt.date) -> ValidationReport:
    try:
        table = read_raw(path)
    except FileNotFoundError:
        return unreadable_report(str(path), f"{path} does not exist (run `dvc pull`?)", params)
    except pd.errors.EmptyDataError:
        return unreadable_report(str(path), f"{path} is empty: no header, no rows", params)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        return unreadable_report(str(path), f"{path} is not a readable CSV: {exc}".strip(), params)
    return validate_table(table, params, start_date, str(path))


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
