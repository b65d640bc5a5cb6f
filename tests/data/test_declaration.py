"""dataset.yaml: one declaration of the data, what is derived from it, and clear errors for every mistake."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from forkcast.data import calendar, declaration, expressions
from forkcast.data.declaration import DeclarationError, Frequency, Inputs

from ..conftest import EXAMPLES, ROOT, Example

pytestmark = pytest.mark.datasets


def raw_declaration(path: Path = ROOT / "dataset.yaml") -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def test_each_example_declaration_loads_and_names_its_target_features_and_unit(example: Example) -> None:
    dataset = example.dataset
    columns = pd.read_csv(example.data, nrows=0).columns
    assert set(dataset.file_columns) == set(columns)  # every column of the file is declared, none invented
    assert dataset.target in columns
    assert dataset.unit != "units"  # declared, not the fallback
    assert set(dataset.seasonal_keys) <= set(dataset.feature_names)
    assert dataset.target not in dataset.feature_names
    assert not set(dataset.columns_with("leaking")) & set(dataset.feature_names)
    assert dataset.file.parts[0] == "data"


def test_the_features_are_the_declared_ones_then_the_calendar_ones_in_order(example: Example) -> None:
    dataset = example.dataset
    declared = [name for name, column in dataset.columns.items() if column.role == "feature"]
    assert list(dataset.feature_names) == [*declared, *dataset.calendar]
    for name in dataset.calendar:
        feature = dataset.feature(name)
        assert (feature.type, feature.min, feature.max) == (
            "int", declaration.CALENDAR[name].minimum, declaration.CALENDAR[name].maximum,
        )  # fmt: skip


def test_the_drift_kinds_default_from_the_types_and_can_be_declared(example: Example) -> None:
    dataset = example.dataset
    kinds = dataset.drift_kinds()
    assert list(kinds) == list(dataset.feature_names)
    for feature in dataset.features:
        expected = "continuous" if feature.type == "float" else "discrete"
        assert kinds[feature.name] == expected
    raw = raw_declaration(example.declaration)
    first_float = next(
        name for name, column in raw["columns"].items() if column["type"] == "float" and column["role"] == "feature"
    )
    raw["columns"][first_float]["drift"] = "discrete"
    assert declaration.parse(raw).drift_kinds()[first_float] == "discrete"


def test_the_model_inputs_travel_as_json_and_come_back_equal(example: Example) -> None:
    inputs = example.dataset.inputs()
    again = Inputs.model_validate_json(inputs.model_dump_json())
    assert again == inputs
    assert again.names == example.dataset.feature_names
    assert again.target.name == example.dataset.target
    assert set(again.numeric) | set(again.categorical) == set(again.names)


def test_only_rules_on_features_bind_a_request() -> None:
    bikes = EXAMPLES["bikes"].dataset
    assert set(bikes.rules) == {"workingday_consistent", "target_is_casual_plus_registered"}
    assert set(bikes.request_rules()) == {"workingday_consistent"}  # the other needs the target: not in a request
    electricity = EXAMPLES["electricity"].dataset
    assert set(electricity.request_rules()) == {"no_work_on_weekends"}  # a calendar feature counts as a feature


@pytest.mark.parametrize(
    ("text", "minutes", "period", "rows"),
    [
        ("15min", 15, "quarter-hour", 96),
        ("half-hour", 30, "half-hour", 48),
        ("30min", 30, "half-hour", 48),
        ("hour", 60, "hour", 24),
        ("h", 60, "hour", 24),
        ("day", 1_440, "day", 7),
        ("week", 10_080, "week", 52),
    ],
)
def test_frequencies_and_their_natural_cycles(text: str, minutes: int, period: str, rows: int) -> None:
    frequency = Frequency.parse(text)
    assert (frequency.minutes, frequency.period, frequency.rows_per_cycle) == (minutes, period, rows)


def test_a_frequency_reads_as_an_adjective() -> None:
    adjectives = [Frequency.parse(text).adjective for text in ("30min", "hour", "day", "week", "20min")]
    assert adjectives == ["half-hourly", "hourly", "daily", "weekly", "20-minute"]


@pytest.mark.parametrize("text", ["7min", "fortnight", "0min", "2d", ""])
def test_a_frequency_the_template_cannot_cycle_over_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a frequency this template knows"):
        Frequency.parse(text)


def broken(edit: str) -> dict[str, Any]:  # noqa: PLR0912 (one branch per mistake)
    raw = copy.deepcopy(raw_declaration())
    columns = raw["columns"]
    match edit:
        case "no target":
            columns["bikers"] = {"role": "ignored", "type": "int", "min": 0}
        case "two targets":
            columns["casual"]["role"] = "target"
        case "a text target":
            columns["bikers"] = {"role": "target", "type": "str", "categories": ["few", "many"]}
        case "an unknown role":
            columns["hum"]["role"] = "input"
        case "a text feature without categories":
            del columns["weathersit"]["categories"]
        case "a category of the wrong type":
            columns["season"]["categories"] = [1, 2, "three"]
        case "min above max":
            columns["temp"]["min"] = 2
        case "range and categories":
            columns["season"]["min"] = 1
        case "the time column missing":
            raw["time"]["column"] = "date"
        case "day numbers without an origin":
            del raw["time"]["origin"]
        case "a seasonal key that is no feature":
            raw["seasonal_keys"] = ["workingday", "casual"]
        case "a rule on an unknown column":
            raw["rules"]["sunny"] = "weather == 'clear'"
        case "a rule that calls a function":
            raw["rules"]["sneaky"] = "__import__('os').system('true') == 0"
        case "a calendar feature named like a column":
            raw["calendar"] = {"hr": "hour"}
        case "an unknown calendar feature":
            raw["calendar"] = ["moon_phase"]
        case "a holiday without a country":
            raw["calendar"] = ["month", "holiday"]
        case "a file outside data/":
            raw["file"] = "bikes.csv"
        case "a misspelled key":
            raw["seasonal_key"] = raw.pop("seasonal_keys")
        case "a reserved name":
            columns["prediction"] = {"role": "feature", "type": "float"}
        case "a hook feature without a hook":
            columns["daytime"] = {"role": "feature", "type": "int", "categories": [0, 1], "source": "hook"}
    return raw


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        ("no target", "exactly one column needs role: target, found 0"),
        ("two targets", "exactly one column needs role: target, found 2 (casual, bikers)"),
        ("a text target", "must be a number"),
        ("an unknown role", "columns.hum.role: Input should be 'feature', 'target', 'time', 'leaking' or 'ignored'"),
        ("a text feature without categories", "columns.weathersit: a text feature needs its categories"),
        ("a category of the wrong type", "categories ['three'] are not int values"),
        ("min above max", "min 2 is above max 1"),
        ("range and categories", "either categories or min/max"),
        ("the time column missing", "time.column 'date' is not a declared column"),
        ("day numbers without an origin", "day_number needs time.origin"),
        ("a seasonal key that is no feature", "seasonal_keys names 'casual', which is not a feature"),
        ("a rule on an unknown column", "rule 'sunny' names weather: neither columns nor calendar features"),
        ("a rule that calls a function", "rule 'sneaky': '__import__('os').system('true') == 0' uses Call"),
        ("a calendar feature named like a column", "calendar feature 'hr' has the name of a column"),
        ("an unknown calendar feature", "'moon_phase' is not one of hour, minute_of_day"),
        ("a holiday without a country", "needs `holidays: {country: XX}`"),
        ("a file outside data/", "file bikes.csv must be under data/"),
        ("a misspelled key", "seasonal_key: unknown key"),
        ("a reserved name", "column 'prediction' uses a name Forkcast keeps for itself"),
        ("a hook feature without a hook", "columns ['daytime'] come from the hook, but no hook is declared"),
    ],
)
def test_every_mistake_in_the_declaration_is_named(edit: str, words: str) -> None:
    with pytest.raises(DeclarationError) as error:
        declaration.parse(broken(edit), "dataset.yaml")
    assert words in str(error.value)
    assert str(error.value).startswith("dataset.yaml: ")


def test_an_unquoted_date_is_refused_before_dvc_trips_over_it(tmp_path: Path) -> None:
    path = tmp_path / "dataset.yaml"
    path.write_text((ROOT / "dataset.yaml").read_text().replace('origin: "2011-01-01"', "origin: 2011-01-01"))
    with pytest.raises(DeclarationError, match=r"quote the date\(s\) at time\.origin"):
        declaration.load(path)


def test_unreadable_declarations_are_clear(tmp_path: Path) -> None:
    path = tmp_path / "dataset.yaml"
    with pytest.raises(DeclarationError, match="not found"):
        declaration.load(path)
    path.write_text("columns: [unclosed\n")
    with pytest.raises(DeclarationError, match="not valid YAML"):
        declaration.load(path)
    path.write_text("- a list\n")
    with pytest.raises(DeclarationError, match="must be a mapping"):
        declaration.load(path)


def test_times_come_from_day_numbers_and_hours_or_from_a_format() -> None:
    bikes = EXAMPLES["bikes"].dataset
    table = pd.DataFrame({"day": ["1", "2", "x", "1000000", "365"], "hr": ["0", "23", "1", "1", "24"]})
    stamps = calendar.timestamps(table, bikes.time)
    assert stamps.iloc[0] == pd.Timestamp("2011-01-01 00:00")
    assert stamps.iloc[1] == pd.Timestamp("2011-01-02 23:00")
    assert stamps.iloc[2:].isna().all()  # not a number, past any calendar, an hour that does not exist
    electricity = EXAMPLES["electricity"].dataset
    table = pd.DataFrame({"Time": ["2014-06-01 08:30", " 2014-06-01 09:00", "June 1st", "2014-13-01 00:00"]})
    stamps = calendar.timestamps(table, electricity.time)
    assert list(stamps.iloc[:2]) == [pd.Timestamp("2014-06-01 08:30"), pd.Timestamp("2014-06-01 09:00")]
    assert stamps.iloc[2:].isna().all()


def test_times_with_an_offset_are_read_in_utc_so_daylight_saving_keeps_the_grid() -> None:
    time = declaration.TimeAxis(column="Time", format="iso", frequency="30min")  # type: ignore[arg-type]
    # Melbourne leaves daylight saving on 6 April 2014: the local clock repeats 02:00-03:00, UTC does not.
    local = ["2014-04-06 02:30+11:00", "2014-04-06 02:00+10:00", "2014-04-06 02:30+10:00", "2014-04-05T16:00Z"]
    stamps = calendar.timestamps(pd.DataFrame({"Time": local}), time)
    assert list(stamps) == [pd.Timestamp(t) for t in ("2014-04-05 15:30", "2014-04-05 16:00", "2014-04-05 16:30")] + [
        pd.Timestamp("2014-04-05 16:00")
    ]
    assert stamps.dt.tz is None  # naive, as times without an offset are


def test_calendar_attributes() -> None:
    stamps = pd.Series(pd.to_datetime(["2014-06-01 08:30", "2014-12-25 23:00", None]))
    assert calendar.attribute(stamps, "minute_of_day").tolist()[:2] == [510, 1380]
    assert calendar.attribute(stamps, "weekday").tolist()[:2] == [6, 3]  # a Sunday, a Thursday
    assert calendar.attribute(stamps, "weekend").tolist()[:2] == [1, 0]
    assert calendar.attribute(stamps, "month").tolist()[:2] == [6, 12]
    assert calendar.attribute(stamps, "day_of_year").tolist()[:2] == [152, 359]
    assert calendar.attribute(stamps, "week_of_year").tolist()[:2] == [22, 52]
    assert calendar.attribute(stamps, "hour").isna().tolist() == [False, False, True]  # no time, no hour
    christmas = calendar.attribute(stamps, "holiday", declaration.HolidayCalendar(country="AU", subdivision="VIC"))
    assert christmas.tolist()[:2] == [0, 1]


def test_rules_are_small_formulas_on_columns_never_code() -> None:
    columns = {"a": np.array([1, 3, 2]), "b": pd.Series([1, 1, 5]), "w": np.array(["x", "y", "x"], dtype=object)}
    assert expressions.evaluate("(a in (1, 2)) & ~(b > 3)", columns).tolist() == [True, False, False]
    assert expressions.evaluate("0 <= a < 2 or b == 5", columns).tolist() == [True, False, True]
    assert expressions.evaluate("w not in ('x',)", columns).tolist() == [False, True, False]
    assert expressions.evaluate("a + b * 2 == 3", columns).tolist() == [True, False, False]
    assert expressions.names("workingday == ((weekday >= 1) & (holiday == 0))") == {"workingday", "weekday", "holiday"}
    for bad in ("open('x')", "a.b", "a[0]", "a + (1, 2)", "a in b", "lambda: 1", "a ==", "a in (b, 1)"):
        with pytest.raises(expressions.ExpressionError):
            expressions.parse(bad)


def test_a_value_of_the_target_reads_well_at_any_scale() -> None:
    assert [declaration.figure(x) for x in (54.775, 5.3712, 0.2143, 0.00123, 0.0, 1234.5)] == [
        "54.8", "5.37", "0.214", "0.00123", "0.0", "1,234.5",
    ]  # fmt: skip
    assert dt.date(2011, 1, 1) == EXAMPLES["bikes"].dataset.time.origin


def test_several_series_in_one_file_are_counted_in_rows() -> None:
    stores = declaration.parse(
        {
            "name": "store sales",
            "file": "data/stores.csv",
            "time": {"column": "date", "format": "%Y-%m-%d", "frequency": "day"},
            "key": ["store", "date"],
            "columns": {
                "date": {"role": "time", "type": "str"},
                "store": {"role": "feature", "type": "str", "categories": ["north", "south"]},
                "sold": {"role": "target", "type": "int", "min": 0, "unit": "units"},
            },
            "calendar": ["weekday"],
            "seasonal_keys": ["store", "weekday"],
        }
    )
    assert stores.unique_key == ("store", "date")
    assert stores.inputs().series == ("store",)
    assert stores.inputs().rows == "rows"  # 3 stores x 7 days are 21 rows, not 21 days
    assert EXAMPLES["bikes"].dataset.inputs().rows == "hours"
    assert EXAMPLES["electricity"].dataset.inputs().rows == "half-hours"


def test_weekly_rows_fall_on_one_weekday() -> None:
    weekly = declaration.parse(
        {
            "name": "weekly",
            "file": "data/weekly.csv",
            "time": {"column": "week", "frequency": "week"},
            "columns": {
                "week": {"role": "time", "type": "str"},
                "x": {"role": "feature", "type": "int", "min": 0},
                "y": {"role": "target", "type": "float", "unit": "t"},
            },
            "calendar": ["week_of_year"],
            "seasonal_keys": ["week_of_year"],
        }
    )
    from forkcast.data.schema import on_frequency

    stamps = pd.Series(pd.to_datetime(["2014-01-06", "2014-01-13", "2014-01-21", "2014-01-27 12:00"], format="ISO8601"))
    assert on_frequency(stamps, weekly).tolist() == [True, True, False, False]  # a Tuesday, a noon
    assert weekly.time.frequency.rows_per_cycle == 52
    with pytest.raises(DeclarationError, match=r"\['hour'\] need rows shorter than a day"):
        declaration.parse({**weekly.model_dump(mode="json"), "calendar": ["hour"]})
