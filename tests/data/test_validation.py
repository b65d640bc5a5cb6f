"""The validate stage on the real data and on broken copies of it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest

from forkcast.config import ConfigError, ValidateParams
from forkcast.data.validation import check_names, render_markdown, validate_file, validate_table, write_report

START = dt.date(2011, 1, 1)


def validate(table: pd.DataFrame, **params: object) -> dict:
    report = validate_table(table, ValidateParams.model_validate(params), START, "test.csv")
    return report.to_dict()


def failed(report: dict) -> dict[str, dict]:
    return {check["name"]: check for check in report["checks"] if not check["passed"]}


def test_the_real_data_passes_every_check(raw_text: pd.DataFrame) -> None:
    report = validate(raw_text)
    assert report["passed"]
    assert failed(report) == {}
    assert report["summary"]["checks"] == len(check_names())
    assert report["summary"]["rows_passing_all_checks"] == len(raw_text)


def test_a_missing_column_fails_its_checks_and_the_cross_checks_that_need_it(raw_text: pd.DataFrame) -> None:
    report = validate(raw_text.drop(columns=["weathersit", "casual"]))
    failures = failed(report)
    assert not report["passed"]
    assert {"weathersit.present", "weathersit.isin", "casual.present"} <= set(failures)
    assert "column 'weathersit' is missing" in failures["weathersit.present"]["error"]
    assert "casual" in failures["rows.target_is_casual_plus_registered"]["error"]
    assert "rows.one_per_hour" not in failures  # it needs only day and hr


def test_text_in_a_numeric_column_fails_the_type_check_with_samples(raw_text: pd.DataFrame) -> None:
    broken = raw_text.copy()
    broken.loc[[3, 10], "temp"] = "warm"
    report = validate(broken)
    check = failed(report)["temp.dtype"]
    assert check["rows_failed"] == 2
    assert check["pass_rate"] == pytest.approx(1 - 2 / len(broken))
    assert [sample["line"] for sample in check["failure_samples"]] == [5, 12]  # header is line 1
    assert check["failure_samples"][0]["temp"] == "warm"
    assert report["summary"]["rows_passing_all_checks"] == len(broken) - 2


def test_an_unknown_weather_category_is_named(raw_text: pd.DataFrame) -> None:
    broken = raw_text.copy()
    broken.loc[100, "weathersit"] = "tornado"
    check = failed(validate(broken))["weathersit.isin"]
    assert check["rows_failed"] == 1
    assert check["failure_samples"] == [{"line": 102, "weathersit": "tornado"}]


def test_duplicated_hours_fail_one_row_per_hour(raw_text: pd.DataFrame) -> None:
    broken = pd.concat([raw_text, raw_text.iloc[[0, 1]]], ignore_index=True)
    check = failed(validate(broken))["rows.one_per_hour"]
    assert check["rows_failed"] == 4  # both copies of each duplicated hour


def test_out_of_range_values_fail_their_range_checks(raw_text: pd.DataFrame) -> None:
    broken = raw_text.copy()
    broken.loc[5, "hum"] = "1.7"
    broken.loc[6, "hr"] = "24"
    broken.loc[7, "bikers"] = "-3"
    failures = failed(validate(broken))
    assert {"hum.in_range", "hr.in_range", "bikers.greater_than_or_equal_to"} <= set(failures)
    assert failures["hum.in_range"]["failure_samples"][0]["hum"] == "1.7"


def test_cross_column_rules(raw_text: pd.DataFrame) -> None:
    broken = raw_text.copy()
    saturday = broken.index[broken["weekday"] == "6"][0]
    broken.loc[saturday, "workingday"] = "1"
    broken.loc[0, "bikers"] = "999"
    broken.loc[1, "mnth"] = "July"
    failures = failed(validate(broken))
    assert failures["rows.workingday_consistent"]["rows_failed"] == 1
    assert failures["rows.target_is_casual_plus_registered"]["rows_failed"] == 1
    assert failures["rows.month_matches_day"]["rows_failed"] == 1


def test_missing_values_fail_not_null(raw_text: pd.DataFrame) -> None:
    broken = raw_text.copy()
    broken.loc[[1, 2, 3], "windspeed"] = None
    check = failed(validate(broken))["windspeed.not_null"]
    assert check["rows_failed"] == 3


def test_a_per_check_tolerance_lets_a_check_pass(raw_text: pd.DataFrame) -> None:
    broken = raw_text.copy()
    broken.loc[5, "hum"] = "1.7"
    assert "hum.in_range" in failed(validate(broken))
    tolerant = validate(broken, min_pass_rate={"hum.in_range": 0.99})
    assert tolerant["passed"]


def test_the_overall_threshold_is_the_share_of_checks(raw_text: pd.DataFrame) -> None:
    broken = raw_text.copy()
    broken.loc[5, "hum"] = "1.7"
    report = validate(broken, min_share_of_checks_passed=0.95)
    total = report["summary"]["checks"]
    assert report["summary"]["checks_passed"] == total - 1
    assert report["passed"] == ((total - 1) / total >= 0.95)


def test_an_unknown_check_name_in_the_tolerances_is_a_config_error(raw_text: pd.DataFrame) -> None:
    with pytest.raises(ConfigError, match=r"unknown checks \['hum.in_rnage'\].*hum.in_range"):
        validate(raw_text, min_pass_rate={"hum.in_rnage": 0.5})


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10", "not a readable CSV"),
    ],
)
def test_an_unreadable_file_is_reported_not_raised(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(content)
    report = validate_file(path, ValidateParams(), START)
    assert not report.passed
    assert problem in report.checks[0].error


def test_a_file_that_is_not_the_expected_table_fails_on_columns(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text('{"this": "is json"}\n')
    report = validate_file(path, ValidateParams(), START)
    assert not report.passed
    assert "season.present" in {check.name for check in report.failed_checks}


def test_a_header_without_rows_fails_not_empty(tmp_path: Path, raw_text: pd.DataFrame) -> None:
    path = tmp_path / "data.csv"
    raw_text.head(0).to_csv(path, index=False)
    report = validate_file(path, ValidateParams(), START)
    assert [check.name for check in report.failed_checks] == ["table.not_empty"]
    assert not report.passed


def test_the_reports_list_every_check(tmp_path: Path, raw_text: pd.DataFrame) -> None:
    broken = raw_text.copy()
    broken.loc[100, "weathersit"] = "tornado"
    report = validate_table(broken, ValidateParams(), START, "data.csv")
    write_report(report, tmp_path / "report.json", tmp_path / "report.md")
    stored = json.loads((tmp_path / "report.json").read_text())
    assert [c["name"] for c in stored["checks"]] == check_names()
    markdown = (tmp_path / "report.md").read_text()
    assert markdown.startswith("# Data validation: FAILED")
    assert "`weathersit.isin`" in markdown
    assert "| 102 | tornado |" in markdown
    assert markdown == render_markdown(report)


def test_a_day_that_is_not_a_date_is_reported_not_raised(raw_text: pd.DataFrame) -> None:
    broken = raw_text.copy()
    broken.loc[3, "day"] = "x"
    broken.loc[4, "day"] = "1000000"  # past any calendar pandas can represent
    failures = failed(validate(broken))
    assert failures["day.dtype"]["rows_failed"] == 1
    assert failures["rows.month_matches_day"]["rows_failed"] == 1


def test_a_missing_column_means_no_row_is_vouched_for(raw_text: pd.DataFrame) -> None:
    report = validate(raw_text.drop(columns=["hum"]))
    assert report["summary"]["rows_passing_all_checks"] == 0
