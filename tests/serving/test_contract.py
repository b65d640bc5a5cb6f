"""The request contract, derived from the model's inputs: what the service accepts, and how it names what it rejects."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from forkcast.config import Params
from forkcast.data.declaration import Feature, Inputs, Target
from forkcast.data.prepare import Splits
from forkcast.serving.contract import (
    MAX_RECORDS,
    TOKEN_ENV,
    SettingError,
    api_token,
    attribute_names,
    auth_headers,
    columns_of_records,
    record_model,
    records_type,
)
from forkcast.serving.smoke import bad_requests


@pytest.fixture
def records(params: Params) -> TypeAdapter[Any]:
    return TypeAdapter(records_type(params.dataset.inputs()))


@pytest.fixture
def valid_record(splits: Splits, params: Params) -> dict[str, Any]:
    """A real valid record: the first test row."""
    row: dict[str, Any] = splits.test[list(params.dataset.feature_names)].head(1).to_dict(orient="records")[0]
    return {key: value.item() if hasattr(value, "item") else value for key, value in row.items()}


def errors(records: TypeAdapter[Any], body: Any) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as caught:
        records.validate_python(body)
    return caught.value.errors()


def error_locations(records: TypeAdapter[Any], body: Any) -> list[tuple[Any, ...]]:
    return [tuple(error["loc"]) for error in errors(records, body)]


@pytest.mark.datasets
class TestEveryDataset:
    def test_the_contract_has_exactly_the_model_features_in_order(self, params: Params) -> None:
        model = record_model(params.dataset.inputs())
        assert [field.alias for field in model.model_fields.values()] == list(params.dataset.feature_names)

    def test_every_test_row_of_the_real_data_is_accepted(
        self, records: TypeAdapter[Any], splits: Splits, params: Params
    ) -> None:
        rows = splits.test[list(params.dataset.feature_names)].to_dict(orient="records")
        accepted = records.validate_python(rows[:MAX_RECORDS])
        assert len(accepted) == min(len(rows), MAX_RECORDS)
        columns = columns_of_records(accepted, params.dataset.inputs())
        assert list(columns) == list(params.dataset.feature_names)
        assert columns[params.dataset.feature_names[0]] == [
            row[params.dataset.feature_names[0]] for row in rows[: len(accepted)]
        ]

    def test_each_derived_bad_request_is_rejected_naming_its_field(
        self, records: TypeAdapter[Any], valid_record: dict[str, Any], params: Params
    ) -> None:
        cases = bad_requests(valid_record, params.dataset.inputs())
        assert {label for label, _, _ in cases} >= {"missing field", "wrong type", "extra field", "empty batch"}
        for label, body, field in cases:
            locations = error_locations(records, body["records"])
            assert locations, label
            named = {str(part) for location in locations for part in location}
            assert field in named or field == "records", (label, locations)

    def test_strings_are_not_numbers_and_booleans_are_not_integers(
        self, records: TypeAdapter[Any], valid_record: dict[str, Any], params: Params
    ) -> None:
        for feature in params.dataset.features:
            if feature.type == "str":
                continue
            assert error_locations(records, [{**valid_record, feature.name: str(valid_record[feature.name])}]) == [
                (0, feature.name)
            ]
            if feature.type == "int":
                assert error_locations(records, [{**valid_record, feature.name: True}]) == [(0, feature.name)]
                assert error_locations(records, [{**valid_record, feature.name: 1.5}]) == [(0, feature.name)]
            else:
                assert error_locations(records, [{**valid_record, feature.name: float("nan")}]) == [(0, feature.name)]

    def test_json_integers_are_accepted_where_floats_are_expected(
        self, records: TypeAdapter[Any], valid_record: dict[str, Any], params: Params
    ) -> None:
        name = next(f.name for f in params.dataset.features if f.type == "float")
        whole = int(params.dataset.feature(name).min or 0)
        record = records.validate_json(json.dumps([{**valid_record, name: whole}]))[0]
        assert columns_of_records([record], params.dataset.inputs())[name] == [float(whole)]

    def test_a_missing_field_is_named_with_its_record(
        self, records: TypeAdapter[Any], valid_record: dict[str, Any], params: Params
    ) -> None:
        name = params.dataset.feature_names[-1]
        record = {k: v for k, v in valid_record.items() if k != name}
        assert error_locations(records, [valid_record, record]) == [(1, name)]

    @pytest.mark.parametrize("size", [0, MAX_RECORDS + 1])
    def test_an_empty_or_over_large_batch_is_rejected(
        self, records: TypeAdapter[Any], valid_record: dict[str, Any], size: int
    ) -> None:
        assert error_locations(records, [valid_record] * size) == [()]

    def test_the_largest_batch_is_accepted(self, records: TypeAdapter[Any], valid_record: dict[str, Any]) -> None:
        assert len(records.validate_python([valid_record] * MAX_RECORDS)) == MAX_RECORDS

    def test_a_record_that_breaks_a_declared_rule_on_features_is_rejected_saying_which(
        self, records: TypeAdapter[Any], splits: Splits, params: Params
    ) -> None:
        inputs = params.dataset.inputs()
        assert inputs.rules  # both examples declare one
        name, rule = next(iter(inputs.rules.items()))
        rows = splits.test[list(inputs.names)].to_dict(orient="records")
        broken = _break_rule(rows, rule)
        failures = errors(records, [rows[0], broken])
        assert len(failures) == 1
        assert failures[0]["loc"] == ()
        assert "record 1 (" in failures[0]["msg"]
        assert f"breaks the rule {name}" in failures[0]["msg"]


def _break_rule(rows: list[dict[str, Any]], rule: str) -> dict[str, Any]:
    """A real row changed so that it breaks `rule` (flip a 0/1 flag it reads)."""
    from forkcast.data import expressions

    for row in rows:
        for name in sorted(expressions.names(rule)):
            if row.get(name) in (0, 1):
                candidate = {**row, name: 1 - row[name]}
                columns = {key: [value] for key, value in candidate.items()}
                if not expressions.evaluate(rule, columns)[0]:
                    return candidate
    raise AssertionError(f"no row could be made to break {rule}")


@pytest.mark.bikes
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"season": 5}, "season"),
        ({"month": 0}, "month"),
        ({"hr": 24}, "hr"),
        ({"hr": 3.5}, "hr"),
        ({"hr": "8"}, "hr"),
        ({"temp": "0.3"}, "temp"),
        ({"hr": True}, "hr"),
        ({"holiday": False}, "holiday"),
        ({"holiday": 2}, "holiday"),
        ({"weekday": -1}, "weekday"),
        ({"weathersit": "sunny"}, "weathersit"),
        ({"temp": 1.01}, "temp"),
        ({"hum": -0.1}, "hum"),
        ({"windspeed": float("nan")}, "windspeed"),
        ({"atemp": "warm"}, "atemp"),
        ({"bikers": 12}, "bikers"),  # the target is not an input
    ],
)
def test_a_bad_bike_value_is_rejected_naming_its_field(
    records: TypeAdapter[Any], valid_record: dict[str, Any], change: dict[str, Any], field: str
) -> None:
    assert error_locations(records, [{**valid_record, **change}]) == [(0, field)]


@pytest.mark.bikes
def test_a_weekend_or_holiday_is_not_a_working_day(records: TypeAdapter[Any], valid_record: dict[str, Any]) -> None:
    sunday = {**valid_record, "weekday": 0, "workingday": 0, "holiday": 0}
    holiday = {**valid_record, "weekday": 3, "holiday": 1, "workingday": 0}
    assert len(records.validate_python([sunday, holiday])) == 2
    failure = errors(records, [{**sunday, "workingday": 1}])[0]
    assert "holiday=0, weekday=0, workingday=1" in failure["msg"]
    assert "workingday_consistent" in failure["msg"]


def test_any_column_name_makes_a_field_even_one_python_would_not_allow() -> None:
    inputs = Inputs(
        dataset="odd names",
        features=(
            Feature(name="temp (°C)", type="float", min=-50, max=60),
            Feature(name="class", type="int", categories=(0, 1)),
            Feature(name="model_config", type="str", categories=("a", "b")),
        ),
        target=Target(name="sold", type="int", unit="units", min=0),
        frequency={"minutes": 1_440},  # type: ignore[arg-type]
    )
    assert attribute_names(inputs) == ["feature_0", "feature_1", "feature_2"]
    adapter = TypeAdapter(records_type(inputs))
    record = {"temp (°C)": 21.5, "class": 1, "model_config": "b"}
    accepted = adapter.validate_python([record])
    assert columns_of_records(accepted, inputs) == {"temp (°C)": [21.5], "class": [1], "model_config": ["b"]}
    assert [tuple(e["loc"]) for e in _errors(adapter, [{**record, "class": 2}])] == [(0, "class")]


def test_float_categories_accept_their_values_only() -> None:
    inputs = Inputs(
        dataset="tariffs",
        features=(Feature(name="tariff", type="float", categories=(0.5, 1.0, 1.5)),),
        target=Target(name="kwh", type="float", unit="kWh", min=0),
        frequency={"minutes": 60},  # type: ignore[arg-type]
    )
    adapter = TypeAdapter(records_type(inputs))
    accepted = adapter.validate_python([{"tariff": 1.5}, {"tariff": 1}])
    assert columns_of_records(accepted, inputs) == {"tariff": [1.5, 1.0]}
    failure = _errors(adapter, [{"tariff": 0.75}])
    assert [tuple(e["loc"]) for e in failure] == [(0, "tariff")]


def _errors(adapter: TypeAdapter[Any], body: Any) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as caught:
        adapter.validate_python(body)
    return caught.value.errors()


@pytest.mark.parametrize("example", ["electricity"], indirect=True)
def test_a_calendar_time_off_the_datasets_grid_is_refused(
    records: TypeAdapter[Any], valid_record: dict[str, Any]
) -> None:
    assert len(records.validate_python([{**valid_record, "minute_of_day": 8 * 60 + 30}])) == 1
    failure = errors(records, [{**valid_record, "minute_of_day": 7}])[0]
    assert failure["loc"] == (0, "minute_of_day")
    assert "multiple of 30" in failure["msg"]


@pytest.mark.parametrize(
    ("environ", "headers"),
    [
        ({}, {}),
        ({TOKEN_ENV: ""}, {}),
        ({TOKEN_ENV: " \n"}, {}),
        ({TOKEN_ENV: "abc.DEF-123_~+/="}, {"Authorization": "Bearer abc.DEF-123_~+/="}),
        ({TOKEN_ENV: "abc\n"}, {"Authorization": "Bearer abc"}),  # a secret file's newline is not the token's
    ],
)
def test_clients_send_the_bearer_token_when_one_is_set(environ: dict[str, str], headers: dict[str, str]) -> None:
    assert auth_headers(environ) == headers


@pytest.mark.parametrize("token", ["two words", "naïve", "tab\there"])
def test_a_token_a_header_cannot_carry_is_refused_without_showing_it(token: str) -> None:
    with pytest.raises(SettingError, match=f"{TOKEN_ENV} must be printable ASCII without spaces") as caught:
        api_token({TOKEN_ENV: token})
    assert token not in str(caught.value)
