"""The dataset declaration (`dataset.yaml`): what the data looks like, declared once.

It states each column's role, type and range or categories, the time axis (its column, format and frequency),
the unique key, the calendar features derived from the time, the columns the naive baseline groups by, the
cross-column rules, and at most one code hook. Everything that depends on the data is derived from it: the
validation schema (`schema.py`), the model's inputs, the request contract, the inference log's columns, the
drift job's column kinds, the smoke tests' bad requests, the baseline, the error plots, the replay's batch and
the units in messages.

`Inputs` is the part the model carries with it (features, target, frequency, the rules a request must meet): the
train stage stores it in the model's metadata and the service builds its contract from it. This module needs
only pydantic, numpy and yaml, so the service can load it inside the bento.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from forkcast.data import expressions

DATASET_FILE = Path("dataset.yaml")
HOOKS_MODULE = "forkcast.data.hooks"  # where a hook's function lives (a dependency of the prepare stage)

Role = Literal["feature", "target", "time", "leaking", "ignored"]
ColumnType = Literal["int", "float", "str"]
DriftKind = Literal["discrete", "continuous"]
Value = int | float | str

# Names the pipeline, the service and the inference log use for their own columns.
RESERVED = frozenset(
    {"timestamp", "prediction", "request_id", "position", "model_version", "environment", "date", "expected", "actual"}
)


class DeclarationError(Exception):
    """`dataset.yaml` is missing, unreadable or inconsistent; the message names the key to fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- the calendar ------------------------------------------------------------------------------------------------


class CalendarAttribute(_Strict):
    """A feature derived from the time: its range, and what it means."""

    minimum: int
    maximum: int
    meaning: str


CALENDAR: dict[str, CalendarAttribute] = {
    "hour": CalendarAttribute(minimum=0, maximum=23, meaning="hour of the day"),
    "minute_of_day": CalendarAttribute(minimum=0, maximum=1439, meaning="minutes since midnight"),
    "weekday": CalendarAttribute(minimum=0, maximum=6, meaning="day of the week, 0 is Monday"),
    "weekend": CalendarAttribute(minimum=0, maximum=1, meaning="1 on Saturday and Sunday"),
    "month": CalendarAttribute(minimum=1, maximum=12, meaning="month of the year"),
    "day_of_year": CalendarAttribute(minimum=1, maximum=366, meaning="day of the year"),
    "week_of_year": CalendarAttribute(minimum=1, maximum=53, meaning="ISO week of the year"),
    "holiday": CalendarAttribute(minimum=0, maximum=1, meaning="1 on a public holiday (see `holidays`)"),
}


class HolidayCalendar(_Strict):
    """Whose public holidays the `holiday` calendar feature marks (the `holidays` package's codes)."""

    country: Annotated[str, Field(min_length=2)]
    subdivision: str | None = None


# --- the time axis -------------------------------------------------------------------------------------------------

_FREQUENCY_WORDS = {
    "15min": 15, "quarter-hour": 15, "30min": 30, "half-hour": 30, "h": 60, "1h": 60, "60min": 60, "hour": 60,
    "d": 1_440, "1d": 1_440, "day": 1_440, "w": 10_080, "1w": 10_080, "week": 10_080,
}  # fmt: skip
_MINUTES = re.compile(r"^(\d+)\s*min$")


class Frequency(_Strict):
    """The spacing of the rows: a number of minutes that divides a day, a day, or a week."""

    minutes: int

    @classmethod
    def parse(cls, text: str) -> Frequency:
        word = str(text).strip().lower()
        minutes = _FREQUENCY_WORDS.get(word)
        if minutes is None and (match := _MINUTES.match(word)):
            minutes = int(match.group(1))
        divides_a_day = minutes is not None and 0 < minutes < 1_440 and 1_440 % minutes == 0
        if minutes is None or not (divides_a_day or minutes in (1_440, 10_080)):
            raise ValueError(
                f"'{text}' is not a frequency this template knows: a number of minutes that divides a day "
                "(15min, 30min or half-hour, hour), day or week"
            )
        return cls(minutes=minutes)

    @property
    def sub_daily(self) -> bool:
        return self.minutes < 1_440

    @property
    def period(self) -> str:
        """What one row covers, in words: `hour`, `half-hour`, `day`…"""
        return {15: "quarter-hour", 30: "half-hour", 60: "hour", 1_440: "day", 10_080: "week"}.get(
            self.minutes, f"{self.minutes}-minute period"
        )

    @property
    def adjective(self) -> str:
        """How often rows come, as an adjective: `hourly`, `half-hourly`, `daily`…"""
        named = {15: "quarter-hourly", 30: "half-hourly", 60: "hourly", 1_440: "daily", 10_080: "weekly"}
        return named.get(self.minutes, f"{self.minutes}-minute")

    @property
    def periods(self) -> str:
        return f"{self.period}s"

    @property
    def cycle(self) -> str:
        """The natural cycle the rows repeat over: a day of sub-daily rows, a week of days, a year of weeks."""
        return "day" if self.sub_daily else "week" if self.minutes == 1_440 else "year"

    @property
    def rows_per_cycle(self) -> int:
        return 1_440 // self.minutes if self.sub_daily else 7 if self.minutes == 1_440 else 52

    @property
    def cycle_position(self) -> str:
        """The calendar attribute that says where in its cycle a row falls (the error-by-cycle plot's x)."""
        if self.sub_daily:
            return "hour" if self.minutes == 60 else "minute_of_day"
        return "weekday" if self.minutes == 1_440 else "week_of_year"

    def __str__(self) -> str:
        return self.period


class TimeAxis(_Strict):
    """Where the time of a row comes from."""

    column: str
    # "iso" (2014-01-31 08:30), a strftime format ("%d/%m/%Y %H:%M"), or "day_number" (1 is `origin`). Times that
    # state an offset (+10:00) are read in UTC, so a change at daylight saving neither repeats nor skips a period.
    format: str = "iso"
    origin: dt.date | None = None  # day_number only: the date of day 1
    hour_column: str | None = None  # the hour of the day (0-23) in a column of its own, added to the date
    frequency: Frequency

    @field_validator("frequency", mode="before")
    @classmethod
    def _parse_frequency(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return Frequency.parse(f"{value}min")  # a bare number is minutes
        return Frequency.parse(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _origin_only_for_day_numbers(self) -> TimeAxis:
        if self.format == "day_number" and self.origin is None:
            raise ValueError("time.format day_number needs time.origin, the date of day 1 (e.g. 2011-01-01)")
        if self.format != "day_number" and self.origin is not None:
            raise ValueError("time.origin is only for time.format day_number")
        if self.format not in ("iso", "day_number") and "%" not in self.format:
            raise ValueError(f"time.format '{self.format}' is neither iso, day_number nor a strftime format (%Y-%m-%d)")
        return self

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column, self.hour_column) if self.hour_column else (self.column,)

    def describe(self) -> str:
        if self.format == "day_number":
            source = f"`{self.column}` counts days from {self.origin} (day 1)"
        else:
            source = f"`{self.column}` in {'ISO' if self.format == 'iso' else self.format} format"
        if self.hour_column:
            source += f", plus the hour in `{self.hour_column}`"
        return source


# --- the columns ---------------------------------------------------------------------------------------------------


class Column(_Strict):
    """One column of the file (or, with `source: hook`, one the code hook adds)."""

    role: Role
    type: ColumnType
    min: float | None = None
    max: float | None = None
    categories: tuple[Value, ...] | None = None
    drift: DriftKind | None = None  # features only; default: discrete for int and str, continuous for float
    # The column restates this calendar attribute of the time: it must agree with it. With `categories`, the
    # i-th category stands for the attribute's i-th value (months from January, weekdays from Monday).
    calendar: str | None = None
    unit: str | None = None  # the target's unit, used in every message (bikes, GW, units sold)
    source: Literal["file", "hook"] = "file"
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> Column:
        problems = [*self._value_problems(), *self._role_problems()]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _value_problems(self) -> Iterable[str]:
        if self.categories is not None:
            if self.min is not None or self.max is not None:
                yield "give either categories or min/max, not both"
            if not self.categories:
                yield "categories must not be empty"
            if len(set(self.categories)) != len(self.categories):
                yield "categories must not repeat"
            wrong = [value for value in self.categories if not _fits(value, self.type)]
            if wrong:
                yield f"categories {wrong} are not {self.type} values"
        elif self.type == "str" and self.role == "feature":
            yield "a text feature needs its categories (the values it may take)"
        if self.type == "str" and (self.min is not None or self.max is not None):
            yield "a text column has categories, not min/max"
        if self.min is not None and self.max is not None and self.min > self.max:
            yield f"min {self.min:g} is above max {self.max:g}"
        if self.calendar is not None and self.calendar not in CALENDAR:
            yield f"calendar '{self.calendar}' is not one of {', '.join(CALENDAR)}"
        elif self.calendar is not None and self.categories is not None:
            attribute = CALENDAR[self.calendar]
            values = attribute.maximum - attribute.minimum + 1
            if len(self.categories) != values:
                yield (
                    f"calendar {self.calendar} has {values} values ({attribute.minimum} to {attribute.maximum}): "
                    f"list {values} categories in its order, not {len(self.categories)}"
                )

    def _role_problems(self) -> Iterable[str]:
        if self.drift is not None and self.role != "feature":
            yield "drift applies to features only"
        if self.type == "str" and self.drift == "continuous":
            yield "a text feature can only drift as discrete (its categories have no distance)"
        if self.unit is not None and self.role != "target":
            yield "unit applies to the target only"
        if self.source == "hook" and self.role != "feature":
            yield "only features can come from the hook"

    @property
    def drift_kind(self) -> DriftKind:
        return self.drift or ("continuous" if self.type == "float" else "discrete")

    def rule(self) -> str:
        """The allowed values, in words."""
        if self.categories is not None:
            return "one of " + ", ".join(map(str, self.categories))
        if self.min is not None and self.max is not None:
            return f"{self.min:g} to {self.max:g}"
        if self.min is not None:
            return f"at least {self.min:g}"
        if self.max is not None:
            return f"at most {self.max:g}"
        return "any value"


def _fits(value: Any, kind: ColumnType) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if kind == "int" else isinstance(value, int | float)


# --- what the model carries: its inputs ----------------------------------------------------------------------------


class Feature(_Strict):
    """One model input, as a request must send it."""

    name: str
    type: ColumnType
    min: float | None = None
    max: float | None = None
    categories: tuple[Value, ...] | None = None
    step: int | None = None  # whole numbers only: the value is a multiple of it (minutes on a half-hour grid)
    description: str = ""

    @property
    def categorical(self) -> bool:
        """Text categories are one-hot encoded; numbers (categories or not) go to the model as they are."""
        return self.type == "str"


class Target(_Strict):
    name: str
    type: Literal["int", "float"]
    unit: str
    min: float | None = None  # predictions are clipped to the declared range: demand is never negative
    max: float | None = None

    def clip(self, values: Any) -> np.ndarray:
        """`values` as floats within the target's declared range."""
        array = np.asarray(values, dtype=np.float64)
        return array if self.min is None and self.max is None else np.clip(array, self.min, self.max)


class Inputs(_Strict):
    """The model's input contract: the features in model order, the target, the frequency, the request rules."""

    dataset: str
    description: str = ""
    features: tuple[Feature, ...]
    target: Target
    frequency: Frequency
    rules: dict[str, str] = {}  # rules on features only: a request that breaks one is refused
    series: tuple[str, ...] = ()  # key columns besides the time (one series per store, say); none for one series
    rows_per_period: Annotated[int, Field(ge=1)] = 1  # how many series share a period, as prepared (1 for one series)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(feature.name for feature in self.features)

    @property
    def numeric(self) -> tuple[str, ...]:
        return tuple(feature.name for feature in self.features if not feature.categorical)

    @property
    def categorical(self) -> tuple[str, ...]:
        return tuple(feature.name for feature in self.features if feature.categorical)

    def feature(self, name: str) -> Feature:
        return next(feature for feature in self.features if feature.name == name)

    @property
    def rows(self) -> str:
        """What a row is, in words: `hours`, `half-hours`, or `rows` when several series share each period."""
        return "rows" if self.series else self.frequency.periods

    def quantity(self, value: float, digits: int | None = None) -> str:
        """`54.8 bikes`, `0.214 GW`: a value in the target's unit."""
        return f"{figure(value, digits)} {self.target.unit}"


def figure(value: float, digits: int | None = None) -> str:
    """A value of the target for people: 54.8, 5.37, 0.214 (three significant digits, at least one decimal)."""
    if digits is None:
        size = abs(value)
        digits = 1 if size >= 10 or size == 0 else 2 if size >= 1 else max(3, -int(np.floor(np.log10(size))) + 2)
    return f"{value:,.{digits}f}"


# --- the declaration -----------------------------------------------------------------------------------------------


class Dataset(_Strict):
    """The whole declaration, as `dataset.yaml` states it."""

    name: Annotated[str, Field(min_length=1)]
    description: str = ""
    file: Path  # the data, under data/ (tracked by data.dvc)
    feed: Path | None = None  # the upstream feed `forkcast new-data` takes months from (tracked by feed.dvc)
    time: TimeAxis
    key: tuple[str, ...] | None = None  # one row per key; default: the time's own columns
    columns: dict[str, Column]
    calendar: dict[str, str] = {}  # feature name -> calendar attribute (a list of attributes names them as is)
    holidays: HolidayCalendar | None = None
    seasonal_keys: tuple[str, ...]  # the naive baseline: mean target by these features in training
    rules: dict[str, str] = {}  # cross-column checks: expressions that are true on a valid row
    hook: str | None = None  # "module:function" adding the features declared with `source: hook`

    @field_validator("calendar", mode="before")
    @classmethod
    def _calendar_list(cls, value: Any) -> Any:
        return {name: name for name in value} if isinstance(value, list | tuple) else value

    @model_validator(mode="after")
    def _consistent(self) -> Dataset:
        problems = [
            *self._column_problems(),
            *self._time_problems(),
            *self._calendar_problems(),
            *self._feature_problems(),
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _column_problems(self) -> Iterable[str]:
        if not self.file.parts or self.file.parts[0] != "data":
            yield f"file {self.file} must be under data/ (data.dvc tracks that directory; lineage reads its hash)"
        if self.feed is not None and (not self.feed.parts or self.feed.parts[0] != "feed"):
            yield f"feed {self.feed} must be under feed/ (feed.dvc tracks that directory)"
        targets = [name for name, column in self.columns.items() if column.role == "target"]
        if len(targets) != 1:
            yield f"exactly one column needs role: target, found {len(targets)} ({', '.join(targets) or 'none'})"
        elif self.columns[targets[0]].type == "str":
            yield f"the target {targets[0]} must be a number (int or float): Forkcast models a regression"
        for name, column in self.columns.items():
            if not name.strip():
                yield "a column has an empty name"
            if name in RESERVED and column.role in ("feature", "target"):
                yield f"column '{name}' uses a name Forkcast keeps for itself ({', '.join(sorted(RESERVED))})"
        for name in self.key or ():
            if name not in self.columns:
                yield f"key names '{name}', which is not a declared column"
            elif name not in self.time.columns and (
                self.columns[name].role != "feature" or self.columns[name].source != "file"
            ):
                yield f"key column '{name}' tells series apart: it must be a feature of the file"
        if self.key and not set(self.time.columns) <= set(self.key):
            yield f"key must hold the time's own columns ({', '.join(self.time.columns)}) and what tells series apart"

    def _time_problems(self) -> Iterable[str]:
        time = self.time
        column = self.columns.get(time.column)
        if column is None:
            yield f"time.column '{time.column}' is not a declared column"
        elif column.role != "time":
            yield f"time.column '{time.column}' needs role: time, not {column.role}"
        elif time.format == "day_number" and column.type != "int":
            yield f"time.column '{time.column}' holds day numbers: its type must be int"
        elif time.format != "day_number" and column.type != "str":
            yield f"time.column '{time.column}' holds dates or times: its type must be str"
        if time.hour_column is not None:
            hour = self.columns.get(time.hour_column)
            if hour is None:
                yield f"time.hour_column '{time.hour_column}' is not a declared column"
            elif hour.type != "int" or hour.role not in ("time", "feature"):
                yield f"time.hour_column '{time.hour_column}' must be an int column with role time or feature"
            if not time.frequency.sub_daily:
                yield f"time.hour_column is for rows shorter than a day, not one per {time.frequency}"
        extra_time = [name for name, c in self.columns.items() if c.role == "time" and name not in time.columns]
        if extra_time:
            yield f"role time is for the time's own columns ({', '.join(time.columns)}), not {', '.join(extra_time)}"

    def _calendar_problems(self) -> Iterable[str]:
        for name, attribute in self.calendar.items():
            if attribute not in CALENDAR:
                yield f"calendar feature '{name}': '{attribute}' is not one of {', '.join(CALENDAR)}"
            if name in self.columns:
                yield f"calendar feature '{name}' has the name of a column: name it otherwise ({{other: {attribute}}})"
            if name in RESERVED:
                yield f"calendar feature '{name}' uses a name Forkcast keeps for itself"
        restated = {column.calendar for column in self.columns.values()}
        if "holiday" in {*self.calendar.values(), *restated} and self.holidays is None:
            yield "the holiday calendar feature needs `holidays: {country: XX}` (and optionally a subdivision)"
        if not self.time.frequency.sub_daily:
            short = [name for name, attribute in self.calendar.items() if attribute in ("hour", "minute_of_day")]
            if short:
                yield f"calendar features {short} need rows shorter than a day, not one per {self.time.frequency}"

    def _feature_problems(self) -> Iterable[str]:
        if not self.features:
            yield "no column has role: feature: the model needs at least one input"
        names = set(self.feature_names)
        for key in self.seasonal_keys:
            if key not in names:
                yield f"seasonal_keys names '{key}', which is not a feature ({', '.join(self.feature_names)})"
            elif self.feature(key).type == "float":
                yield f"seasonal key '{key}' is a float feature: the baseline groups by discrete values"
        if not self.seasonal_keys:
            yield "seasonal_keys must name at least one feature (the naive baseline groups by them)"
        hooked = [name for name, column in self.columns.items() if column.source == "hook"]
        if hooked and not self.hook:
            yield f"columns {hooked} come from the hook, but no hook is declared (hook: module:function)"
        if self.hook and not re.fullmatch(rf"{re.escape(HOOKS_MODULE)}:\w+", self.hook):
            yield (
                f"hook '{self.hook}' must name a function of src/forkcast/data/hooks.py, as {HOOKS_MODULE}:FUNCTION "
                "(DVC reruns the prepare stage when that file changes)"
            )
        known = set(self.columns) | set(self.calendar)
        for name, expression in self.rules.items():
            try:
                unknown = expressions.names(expression) - known
            except expressions.ExpressionError as exc:
                yield f"rule '{name}': {exc}"
                continue
            if unknown:
                yield f"rule '{name}' names {', '.join(sorted(unknown))}: neither columns nor calendar features"
                continue
            try:  # a rule that cannot run on these types (text > 1) would fail every row, and every request
                expressions.evaluate(expression, self._sample_row())
            except Exception as exc:
                yield f"rule '{name}' cannot run on the declared types: {type(exc).__name__}: {exc}"

    def _sample_row(self) -> dict[str, Any]:
        """One row of valid-looking values, typed as declared (for trying the rules)."""
        row: dict[str, Any] = {}
        for name, column in self.columns.items():
            if column.categories is not None:
                value: Any = column.categories[0]
            elif column.type == "str":
                value = ""
            else:
                value = column.min if column.min is not None else 0
                value = int(value) if column.type == "int" else float(value)
            row[name] = np.asarray([value], dtype=object if column.type == "str" else None)
        for name, attribute in self.calendar.items():
            row[name] = np.asarray([CALENDAR[attribute].minimum]) if attribute in CALENDAR else np.asarray([0])
        return row

    # --- derived views ---------------------------------------------------------------------------------------------

    @property
    def target(self) -> str:
        return next(name for name, column in self.columns.items() if column.role == "target")

    @property
    def unit(self) -> str:
        return self.columns[self.target].unit or "units"

    @property
    def unique_key(self) -> tuple[str, ...]:
        return self.key or self.time.columns

    @property
    def file_columns(self) -> dict[str, Column]:
        """The columns the file must hold (hook features are added later)."""
        return {name: column for name, column in self.columns.items() if column.source == "file"}

    def columns_with(self, role: Role) -> tuple[str, ...]:
        return tuple(name for name, column in self.columns.items() if column.role == role)

    @property
    def features(self) -> tuple[Feature, ...]:
        """The model's inputs in model order: the declared feature columns, then the calendar features."""
        declared = [
            Feature(
                name=name,
                type=column.type,
                min=column.min,
                max=column.max,
                categories=column.categories,
                description=column.description,
            )
            for name, column in self.columns.items()
            if column.role == "feature"
        ]
        derived = [
            Feature(
                name=name,
                type="int",
                min=CALENDAR[attribute].minimum,
                max=CALENDAR[attribute].maximum,
                step=self.time.frequency.minutes if attribute == "minute_of_day" else None,
                description=CALENDAR[attribute].meaning,
            )
            for name, attribute in self.calendar.items()
            if attribute in CALENDAR
        ]
        return (*declared, *derived)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(feature.name for feature in self.features)

    def feature(self, name: str) -> Feature:
        return next(feature for feature in self.features if feature.name == name)

    def drift_kinds(self) -> dict[str, DriftKind]:
        """Per feature, how the drift job compares it: discrete (distribution of values) or continuous."""
        kinds: dict[str, DriftKind] = {name: "discrete" for name in self.calendar}
        kinds |= {name: column.drift_kind for name, column in self.columns.items() if column.role == "feature"}
        return {name: kinds[name] for name in self.feature_names}

    def request_rules(self) -> dict[str, str]:
        """The rules that involve only features: a request must meet them too."""
        features = set(self.feature_names)
        return {name: rule for name, rule in self.rules.items() if expressions.names(rule) <= features}

    def inputs(self) -> Inputs:
        target = self.columns[self.target]
        return Inputs(
            dataset=self.name,
            description=self.description,
            features=self.features,
            target=Target(
                name=self.target,
                type="int" if target.type == "int" else "float",
                unit=self.unit,
                min=target.min,
                max=target.max,
            ),
            frequency=self.time.frequency,
            rules=self.request_rules(),
            series=tuple(name for name in self.unique_key if name not in self.time.columns),
        )


# --- loading -------------------------------------------------------------------------------------------------------


def load(path: Path = DATASET_FILE) -> Dataset:
    """Read and check the declaration; DeclarationError names the key to fix."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise DeclarationError(f"{path} not found: every project declares its data there (see the README)") from exc
    except yaml.YAMLError as exc:
        raise DeclarationError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise DeclarationError(f"{path} must be a mapping (name, file, time, columns, ...)")
    dates = list(_unquoted_dates(raw))
    if dates:
        raise DeclarationError(
            f'{path}: quote the date(s) at {", ".join(dates)} (origin: "2011-01-01"): DVC records this file as '
            "parameters in JSON, which has no dates"
        )
    return parse(raw, str(path))


def _unquoted_dates(value: Any, where: str = "") -> Iterable[str]:
    """Where YAML read a date or time: the keys to quote."""
    if isinstance(value, dt.date):
        yield where or "the top level"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _unquoted_dates(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for position, item in enumerate(value):
            yield from _unquoted_dates(item, f"{where}[{position}]")


def parse(raw: dict[str, Any], source: str = "the declaration") -> Dataset:
    try:
        return Dataset.model_validate(raw)
    except ValidationError as exc:
        raise DeclarationError(f"{source}: {describe(exc)}") from exc


def read_inputs(path: Path) -> Inputs | None:
    """The input contract a stage wrote (`outputs/prepared/inputs.json`), or None before it ran."""
    if not path.exists():
        return None
    return Inputs.model_validate_json(path.read_text())


def describe(error: ValidationError) -> str:
    """Pydantic's errors as lines that name the key: `columns.temp.min: Input should be a valid number`."""
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{where}: {message}" if where else message)
    return "; ".join(lines)
