"""The service's contract: what a caller sends, and what it gets back.

The request model mirrors the training data's feature checks (see `schema.Features`),
so a record the pipeline would have rejected is rejected at the door with a 4xx that
names the field, instead of being scored.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

MAX_RECORDS = 1_000  # per request; more is a batch job, not a request
BENTO_MODEL_NAME = "forkcast-demand"  # the model inside every bento
MODEL_TAG_ENV = "FORKCAST_MODEL_TAG"  # which model the service loads: set at build and by `forkcast deploy`
# Request ids of our own checks: the drift job tells them from real traffic in the inference log.
SMOKE_REQUEST_PREFIX = "smoke-"
PROBE_REQUEST_PREFIX = "probe-"
CHECK_REQUEST_PREFIXES = (SMOKE_REQUEST_PREFIX, PROBE_REQUEST_PREFIX)

Weather = Literal["clear", "cloudy/misty", "light rain/snow", "heavy rain/snow"]
UnitInterval = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]

EXAMPLE_RECORD = {
    "season": 4,
    "month": 12,
    "hr": 8,
    "holiday": 0,
    "weekday": 3,
    "workingday": 1,
    "weathersit": "clear",
    "temp": 0.3,
    "atemp": 0.31,
    "hum": 0.6,
    "windspeed": 0.15,
}


class HourFeatures(BaseModel):
    """One hour to predict. Weather values are normalised to 0-1, as in the training data."""

    # strict: "8" is not an hour and true is not a 1 (a JSON integer still counts as a float).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    season: Annotated[int, Field(ge=1, le=4, description="1 winter, 2 spring, 3 summer, 4 fall")]
    month: Annotated[int, Field(ge=1, le=12)]
    hr: Annotated[int, Field(ge=0, le=23, description="hour of the day")]
    holiday: Annotated[int, Field(ge=0, le=1)]
    weekday: Annotated[int, Field(ge=0, le=6, description="0 is Sunday")]
    workingday: Annotated[int, Field(ge=0, le=1, description="1 on a weekday (1-5) that is not a holiday")]
    weathersit: Weather
    temp: UnitInterval
    atemp: UnitInterval
    hum: UnitInterval
    windspeed: UnitInterval

    @field_validator("workingday")
    @classmethod
    def _is_weekday_and_not_holiday(cls, value: int, info: ValidationInfo) -> int:
        weekday, holiday = info.data.get("weekday"), info.data.get("holiday")
        if weekday is None or holiday is None:
            return value  # already reported on those fields
        expected = int(weekday not in (0, 6) and holiday == 0)
        if value != expected:
            raise ValueError(f"must be {expected} for weekday={weekday} and holiday={holiday}")
        return value


Records = Annotated[list[HourFeatures], Field(min_length=1, max_length=MAX_RECORDS)]


class Predictions(BaseModel):
    """Predicted rentals, one per record and in the same order."""

    request_id: str
    model_version: str
    predictions: list[float]


class ModelInfo(BaseModel):
    """What is being served, and where it came from."""

    model_name: str
    model_version: str
    bento_model: str
    run_id: str | None
    data_hash: str | None
    git_commit: str | None
    trained_at: str | None
    metrics: dict[str, float]
    backend: Literal["onnx", "scikit-learn"]
    onnx_max_abs_difference: float | None
    features: list[str]
    max_records: int = MAX_RECORDS
