"""The validate stage on the real data of each example, and on broken copies of it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from forkcast.config import ConfigError, Params, ValidateParams
from forkcast.data.declaration import Dataset
from forkcast.data.validation import check_names, render_markdown, validate_file, validate_table, write_report


def validate(table: pd.DataFrame, dataset: Dataset, **params: object) -> dict:
    report = validate_table(table, ValidateParams.model_validate(params), dataset, "test.csv")
    return report.to_dict()


def failed(report: dict) -> dict[str, dict]:
    return {check["name"]: check for check in report["checks"] if not check["passed"]}


def first_feature(dataset: Dataset, kind: str, bounded: bool = False) -> str:
    """The first feature column of the file of that type (with a range, when `bounded`)."""
    return next(
        name
        for name, column in dataset.file_columns.items()
        if column.role == "feature" and column.type == kind and (not bounded or column.max is not None)
    )


@pytest.mark.datasets
class TestEveryDataset:
    """The template's checks, on each example dataset and broken copies of it."""

    def test_the_real_data_passes_every_check(self, raw_text: pd.DataFrame, params: Params) -> None:
        report = validate(raw_text, params.dataset)
        assert report["passed"]
        assert failed(report) == {}
        assert report["summary"]["checks"] == len(check_names(params.dataset))
        assert report["summary"]["rows_passing_all_checks"] == len(raw_text)
        time = report["time"]
        assert time["periods"] == raw_text.shape[0]  # one row per period
        assert time["expected_periods"] == time["periods"] + time["missing_periods"]

    def test_a_missing_target_fails_its_checks_naming_it(self, raw_text: pd.DataFrame, params: Params) -> None:
        target = params.dataset.target
        report = validate(raw_text.drop(columns=[target]), params.dataset)
        failures = failed(report)
        assert not report["passed"]
        assert f"column '{target}' is missing" in failures[f"{target}.present"]["error"]
        assert {f"{target}.not_null", f"{target}.dtype"} <= set(failures)
        assert report["summary"]["rows_passing_all_checks"] == 0  # no row is vouched for

    def test_text_in_a_numeric_column_fails_its_type_and_its_range(
        self, raw_text: pd.DataFrame, params: Params
    ) -> None:
        column = first_feature(params.dataset, "float", bounded=True)
        broken = raw_text.copy()
        broken.loc[[3, 10], column] = "warm"
        failures = failed(validate(broken, params.dataset))
        check = failures[f"{column}.dtype"]
        assert check["rows_failed"] == 2
        assert check["pass_rate"] == pytest.approx(1 - 2 / len(broken))
        assert [sample["line"] for sample in check["failure_samples"]] == [5, 12]  # header is line 1
        assert check["failure_samples"][0][column] == "warm"
        # Text is not a value in range either: it does not pass the range check by being skipped.
        assert failures[f"{column}.in_range"]["rows_failed"] == 2

    def test_duplicated_periods_fail_one_row_per_period(self, raw_text: pd.DataFrame, params: Params) -> None:
        broken = pd.concat([raw_text, raw_text.iloc[[0, 1]]], ignore_index=True)
        check = failed(validate(broken, params.dataset))["rows.one_per_period"]
        assert check["rows_failed"] == 4  # both copies of each duplicated period
        assert set(params.dataset.unique_key) <= set(check["failure_samples"][0])  # the key is shown

    def test_an_out_of_range_value_fails_its_range(self, raw_text: pd.DataFrame, params: Params) -> None:
        column = first_feature(params.dataset, "float", bounded=True)
        too_big = params.dataset.columns[column].max + 1  # type: ignore[operator]
        broken = raw_text.copy()
        broken.loc[5, column] = str(too_big)
        check = failed(validate(broken, params.dataset))[f"{column}.in_range"]
        assert check["rows_failed"] == 1
        assert check["failure_samples"][0][column] == str(too_big)

    def test_an_unknown_category_is_named(self, raw_text: pd.DataFrame, params: Params) -> None:
        column = next(n for n, c in params.dataset.file_columns.items() if c.categories and c.role == "feature")
        broken = raw_text.copy()
        broken.loc[100, column] = "tornado"
        failures = failed(validate(broken, params.dataset))
        check = failures[f"{column}.isin"]
        assert check["rows_failed"] == 1
        assert check["failure_samples"] == [{"line": 102, column: "tornado"}]

    def test_missing_values_fail_not_null_and_are_not_valid_values(
        self, raw_text: pd.DataFrame, params: Params
    ) -> None:
        column = first_feature(params.dataset, "float", bounded=True)
        broken = raw_text.copy()
        broken.loc[[1, 2, 3], column] = None
        failures = failed(validate(broken, params.dataset))
        assert failures[f"{column}.not_null"]["rows_failed"] == 3
        assert failures[f"{column}.in_range"]["rows_failed"] == 3

    def test_a_target_under_another_name_is_reported_with_a_hint(self, raw_text: pd.DataFrame, params: Params) -> None:
        target = params.dataset.target
        report = validate(raw_text.rename(columns={target: "amount"}), params.dataset)
        failures = failed(report)
        known = failures["table.known_columns"]["error"]
        assert "does not know the column(s) 'amount'" in known
        assert f"'amount' could be '{target}'" in known  # its values fit the target's type and range
        assert "the file's 'amount' could be it" in failures[f"{target}.present"]["error"]
        assert "Index(" not in json.dumps(report)  # names, never pandas reprs

    def test_a_time_off_the_grid_fails(self, raw_text: pd.DataFrame, params: Params) -> None:
        broken = raw_text.copy()
        time = params.dataset.time
        if time.format == "day_number":
            broken.loc[4, time.column] = "x"
            failing = "time.valid"
        else:
            broken.loc[4, time.column] = broken.loc[4, time.column][:-2] + "07"  # 08:07 on a half-hourly grid
            failing = "time.on_frequency"
        failures = failed(validate(broken, params.dataset))
        assert failures[failing]["rows_failed"] == 1

    def test_a_per_check_tolerance_lets_a_check_pass(self, raw_text: pd.DataFrame, params: Params) -> None:
        column = first_feature(params.dataset, "float", bounded=True)
        broken = raw_text.copy()
        broken.loc[5, column] = "1000"
        assert f"{column}.in_range" in failed(validate(broken, params.dataset))
        tolerant = validate(broken, params.dataset, min_pass_rate={f"{column}.in_range": 0.99})
        assert tolerant["passed"]

    def test_the_overall_threshold_is_the_share_of_checks(self, raw_text: pd.DataFrame, params: Params) -> None:
        column = first_feature(params.dataset, "float", bounded=True)
        broken = raw_text.copy()
        broken.loc[5, column] = "1000"
        report = validate(broken, params.dataset, min_share_of_checks_passed=0.9)
        total = report["summary"]["checks"]
        assert report["summary"]["checks_passed"] == total - 1
        assert report["passed"] == ((total - 1) / total >= 0.9)

    def test_an_unknown_check_name_in_the_tolerances_is_a_config_error(
        self, raw_text: pd.DataFrame, params: Params
    ) -> None:
        with pytest.raises(ConfigError, match=r"unknown checks \['nothing.in_rnage'\]"):
            validate(raw_text, params.dataset, min_pass_rate={"nothing.in_rnage": 0.5})

    def test_a_header_without_rows_fails_not_empty(
        self, tmp_path: Path, raw_text: pd.DataFrame, params: Params
    ) -> None:
        path = tmp_path / "data.csv"
        raw_text.head(0).to_csv(path, index=False)
        report = validate_file(path, ValidateParams(), params.dataset)
        assert [check.name for check in report.failed_checks] == ["table.not_empty"]
        assert not report.passed

    def test_the_reports_list_every_check(self, tmp_path: Path, raw_text: pd.DataFrame, params: Params) -> None:
        column = next(n for n, c in params.dataset.file_columns.items() if c.categories and c.role == "feature")
        broken = raw_text.copy()
        broken.loc[100, column] = "tornado"
        report = validate_table(broken, ValidateParams(), params.dataset, "data.csv")
        write_report(report, tmp_path / "report.json", tmp_path / "report.md")
        stored = json.loads((tmp_path / "report.json").read_text())
        assert [c["name"] for c in stored["checks"]] == check_names(params.dataset)
        markdown = (tmp_path / "report.md").read_text()
        assert markdown.startswith("# Data validation: FAILED")
        assert f"`{column}.isin`" in markdown
        assert "| 102 | tornado |" in markdown
        assert f"of {stored['time']['expected_periods']:,} {params.dataset.time.frequency.periods}" in markdown
        assert markdown == render_markdown(report)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10", "not a readable CSV"),
    ],
)
def test_an_unreadable_file_is_reported_not_raised(
    tmp_path: Path, content: bytes, problem: str, params: Params
) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(content)
    report = validate_file(path, ValidateParams(), params.dataset)
    assert not report.passed
    assert problem in report.checks[0].error


def test_a_file_that_is_not_the_expected_table_fails_on_columns(tmp_path: Path, params: Params) -> None:
    path = tmp_path / "data.csv"
    path.write_text('{"this": "is json"}\n')
    report = validate_file(path, ValidateParams(), params.dataset)
    assert not report.passed
    assert "season.present" in {check.name for check in report.failed_checks}


@pytest.mark.bikes
def test_the_bike_examples_cross_column_rules(raw_text: pd.DataFrame, params: Params) -> None:
    broken = raw_text.copy()
    saturday = broken.index[broken["weekday"] == "6"][0]
    broken.loc[saturday, "workingday"] = "1"
    broken.loc[0, "bikers"] = "999"
    broken.loc[1, "mnth"] = "July"
    broken.loc[2, "weekday"] = "3"  # 2011-01-01 was a Saturday
    failures = failed(validate(broken, params.dataset))
    assert failures["rows.workingday_consistent"]["rows_failed"] == 2  # the Saturday, and the fake Wednesday
    assert failures["rows.target_is_casual_plus_registered"]["rows_failed"] == 1
    assert failures["mnth.matches_time"]["rows_failed"] == 1
    assert failures["weekday.matches_time"]["rows_failed"] == 1
    assert set(failures["rows.target_is_casual_plus_registered"]["failure_samples"][0]) == {
        "line",
        "bikers",
        "casual",
        "registered",
    }  # fmt: skip  (the columns the rule reads, not the whole row)


@pytest.mark.bikes
def test_a_day_that_is_not_a_date_is_reported_not_raised(raw_text: pd.DataFrame, params: Params) -> None:
    broken = raw_text.copy()
    broken.loc[3, "day"] = "x"
    broken.loc[4, "day"] = "1000000"  # past any calendar pandas can represent
    failures = failed(validate(broken, params.dataset))
    assert failures["day.dtype"]["rows_failed"] == 1
    assert failures["time.valid"]["rows_failed"] == 2
    assert failures["mnth.matches_time"]["rows_failed"] == 2  # no date: nothing to agree with


@pytest.mark.bikes
def test_a_republished_copy_with_other_encodings_fails_on_every_difference(
    raw_text: pd.DataFrame, params: Params, tmp_path: Path
) -> None:
    """The bike data as other sites publish it: named seasons, "6am" hours, Yes/No flags, a date column and
    the target called cnt. Written to a real file and validated as the stage does."""
    seasons = {"1": "winter", "2": "spring", "3": "summer", "4": "fall"}
    copy = raw_text.assign(
        season=raw_text["season"].map(seasons),
        hr=raw_text["hr"].map(lambda hour: f"{int(hour) % 12 or 12}{'am' if int(hour) < 12 else 'pm'}"),
        holiday=raw_text["holiday"].map({"0": "No", "1": "Yes"}),
        dteday=(pd.Timestamp("2011-01-01") + pd.to_timedelta(raw_text["day"].astype(int) - 1, unit="D")).dt.date,
    ).rename(columns={"bikers": "cnt"})
    path = tmp_path / "hour.csv"
    copy.to_csv(path, index=False)
    report = validate_file(path, ValidateParams(), params.dataset).to_dict()
    checks = {check["name"]: check for check in report["checks"]}
    for column in ("season", "hr", "holiday"):
        assert checks[f"{column}.dtype"]["pass_rate"] == 0.0
    # Text never passes a value check it could not be compared in.
    assert checks["season.isin"]["pass_rate"] == 0.0
    assert checks["hr.in_range"]["pass_rate"] == 0.0
    assert checks["holiday.isin"]["pass_rate"] == 0.0
    known = checks["table.known_columns"]["error"]
    assert "the column(s) 'cnt', 'dteday'" in known
    assert "'cnt' could be 'bikers'" in known
    assert "'cnt' could be it under another name" in checks["bikers.present"]["error"]
    assert not report["passed"]
    assert "Index(" not in json.dumps(report)
