"""The request contract: what the service accepts, and how it names what it rejects."""

from __future__ import annotations

import json
import typing
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from forkcast.data.features import FEATURES, WEATHER
from forkcast.data.prepare import Splits
from forkcast.serving.contract import EXAMPLE_RECORD, MAX_RECORDS, HourFeatures, Records, Weather

RECORDS = TypeAdapter(Records)


def error_locations(body: Any) -> list[tuple[Any, ...]]:
    with pytest.raises(ValidationError) as caught:
        RECORDS.validate_python(body)
    return [tuple(error["loc"]) for error in caught.value.errors()]


def test_the_contract_has_exactly_the_model_features() -> None:
    assert set(HourFeatures.model_fields) == set(FEATURES)
    assert typing.get_args(Weather) == WEATHER


def test_every_test_row_of_the_real_data_is_accepted(splits: Splits) -> None:
    rows = splits.test[list(FEATURES)].to_dict(orient="records")
    assert len(RECORDS.validate_python(rows[:MAX_RECORDS])) == min(len(rows), MAX_RECORDS)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"season": 5}, "season"),
        ({"month": 0}, "month"),
        ({"hr": 24}, "hr"),
        ({"hr": 3.5}, "hr"),
        ({"hr": "8"}, "hr"),  # strings are not numbers ...
        ({"temp": "0.3"}, "temp"),
        ({"hr": True}, "hr"),  # ... and booleans are not integers
        ({"holiday": False}, "holiday"),
        ({"holiday": 2}, "holiday"),
        ({"weekday": -1}, "weekday"),
        ({"weathersit": "sunny"}, "weathersit"),
        ({"temp": 1.01}, "temp"),
        ({"hum": -0.1}, "hum"),
        ({"windspeed": float("nan")}, "windspeed"),
        ({"atemp": "warm"}, "atemp"),
        ({"workingday": 0}, "workingday"),  # a Wednesday that is not a holiday is a working day
        ({"bikers": 12}, "bikers"),  # the target is not an input
    ],
)
def test_a_bad_value_is_rejected_naming_its_field(change: dict[str, Any], field: str) -> None:
    assert error_locations([{**EXAMPLE_RECORD, **change}]) == [(0, field)]


def test_json_integers_are_accepted_where_floats_are_expected() -> None:
    record = RECORDS.validate_json(json.dumps([{**EXAMPLE_RECORD, "temp": 0, "hum": 1}]))[0]
    assert (record.temp, record.hum) == (0.0, 1.0)


def test_a_missing_field_is_named() -> None:
    record = {k: v for k, v in EXAMPLE_RECORD.items() if k != "temp"}
    assert error_locations([EXAMPLE_RECORD, record]) == [(1, "temp")]


def test_a_weekend_or_holiday_is_not_a_working_day() -> None:
    sunday = {**EXAMPLE_RECORD, "weekday": 0, "workingday": 0}
    holiday = {**EXAMPLE_RECORD, "holiday": 1, "workingday": 0}
    assert len(RECORDS.validate_python([sunday, holiday])) == 2
    assert error_locations([{**sunday, "workingday": 1}]) == [(0, "workingday")]


@pytest.mark.parametrize("size", [0, MAX_RECORDS + 1])
def test_an_empty_or_over_large_batch_is_rejected(size: int) -> None:
    assert error_locations([EXAMPLE_RECORD] * size) == [()]


def test_the_largest_batch_is_accepted() -> None:
    assert len(RECORDS.validate_python([EXAMPLE_RECORD] * MAX_RECORDS)) == MAX_RECORDS
