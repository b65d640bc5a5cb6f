"""The service's contract: what a caller sends, and what it gets back, derived from the model's inputs.

A request record has one field per feature, typed and bounded as `dataset.yaml` declared it when the model was
trained (`declaration.Inputs`, stored with the model), and the declared rules that involve only features hold for
every record. So a record the pipeline would have rejected is rejected at the door with a 400 that names the
field, instead of being scored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model

from forkcast.data import expressions
from forkcast.data.declaration import Feature, Inputs

MAX_RECORDS = 1_000  # per request; more is a batch job, not a request
BENTO_MODEL_NAME = "forkcast-demand"  # the model inside every bento
CHALLENGER_MODEL_NAME = "forkcast-challenger"  # a second model a bento may carry, scored in the shadow
SHADOW_MODEL_ENV = "FORKCAST_SHADOW_MODEL"  # the challenger's tag: set by the build in the bento, and by deploy
MODEL_TAG_ENV = "FORKCAST_MODEL_TAG"  # which model the service loads: set at build and by `forkcast deploy`
SPILL_ENV = "FORKCAST_INFERENCE_SPILL"  # where the rows the log's sink refuses at shutdown go (set by deploy)
# Request ids of our own checks: the drift job tells them from real traffic in the inference log.
REQUEST_ID_HEADER = "x-request-id"  # a caller's id for its request, logged and echoed back
# What an id may be: it is written into every logged row of its request and echoed, so never stored whole otherwise.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_HEADER_BYTES = 16 * 1024  # all header names and values of one request together
# When set (server side), /predict and /metadata need `Authorization: Bearer <it>`; clients send it when set.
TOKEN_ENV = "FORKCAST_API_TOKEN"
WORKERS_ENV = "FORKCAST_WORKERS"  # the service's worker processes (one per core; the default is 2)
_TOKEN = re.compile(r"[\x21-\x7e]+")  # what a header can carry as it is: printable ASCII, no spaces
PREDICTION = "prediction"  # the inference log's column for what was answered
CHALLENGER_VERSION = "challenger_version"  # with a shadow challenger: its model version, in every row
CHALLENGER_PREDICTION = "challenger_prediction"  # ... and its prediction (null when it failed)

SMOKE_REQUEST_PREFIX = "smoke-"
PROBE_REQUEST_PREFIX = "probe-"
CHECK_REQUEST_PREFIXES = (SMOKE_REQUEST_PREFIX, PROBE_REQUEST_PREFIX)


class SettingError(Exception):
    """A setting from the environment that cannot be used; the message names the variable.

    Not a ValueError: bentoml's loader takes a ValueError raised while the service is imported for "not a bento
    tag", and reports a missing attribute instead of it.
    """


def api_token(environ: Mapping[str, str] = os.environ) -> str | None:
    """The service's bearer token, or None when `TOKEN_ENV` is unset or empty.

    Surrounding whitespace (a secret file's final newline) is dropped; a token a header cannot carry is a
    SettingError that names the variable, never its value.
    """
    token = environ.get(TOKEN_ENV, "").strip()
    if not token:
        return None
    if not _TOKEN.fullmatch(token):
        raise SettingError(f"{TOKEN_ENV} must be printable ASCII without spaces (its value is not shown)")
    return token


def auth_headers(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The header a client sends to /predict and /metadata: the bearer token when one is set, else none."""
    token = api_token(environ)
    return {"Authorization": f"Bearer {token}"} if token else {}


def _one_of(categories: Sequence[Any]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value not in categories:
            raise ValueError(f"Input should be one of {', '.join(map(str, categories))}")
        return value

    return check


def field_type(feature: Feature) -> Any:
    """The annotation of one feature's field: its type, and its range or categories."""
    text = feature.description
    if feature.type == "str":
        return Annotated[Literal[tuple(feature.categories or ())], Field(description=text)]  # type: ignore[misc]
    if feature.categories is not None:
        # Literal would take true for 1 and 1.0 for 1: a strict number of the declared type, then membership.
        kind = int if feature.type == "int" else float
        return Annotated[kind, Field(description=text, json_schema_extra={"enum": list(feature.categories)}),
                         AfterValidator(_one_of(feature.categories))]  # fmt: skip
    if feature.type == "int":
        return Annotated[int, Field(description=text, ge=feature.min, le=feature.max, multiple_of=feature.step)]
    return Annotated[float, Field(description=text, allow_inf_nan=False, ge=feature.min, le=feature.max)]


def attribute_names(inputs: Inputs) -> list[str]:
    """The record model's attribute per feature, by position: any column name (`temp (°C)`, `class`, `model_config`)
    makes a field, and the JSON knows only the name (its alias)."""
    return [f"feature_{position}" for position in range(len(inputs.names))]


def record_model(inputs: Inputs, example: dict[str, Any] | None = None) -> type[BaseModel]:
    """One record to predict: a field per feature, in model order; anything else is refused."""
    fields: dict[str, Any] = {
        attribute: (field_type(feature), Field(alias=feature.name))
        for attribute, feature in zip(attribute_names(inputs), inputs.features, strict=True)
    }
    # strict: "8" is not 8 and true is not 1 (a JSON integer still counts as a float).
    config = ConfigDict(
        extra="forbid", frozen=True, strict=True,
        json_schema_extra={"example": example} if example else None,  # OpenAPI 3.0 (what BentoML serves)
    )  # fmt: skip
    model: type[BaseModel] = create_model("Record", __config__=config, __doc__=_record_doc(inputs), **fields)
    return model


def _record_doc(inputs: Inputs) -> str:
    return (
        f"One {inputs.frequency.period} of {inputs.dataset} to predict {inputs.target.name} ({inputs.target.unit}) for."
    )


def records_type(inputs: Inputs, example: dict[str, Any] | None = None) -> Any:
    """The `records` of a request: 1 to MAX_RECORDS records that meet the declared rules on features."""
    record = record_model(inputs, example)
    attributes = dict(zip(inputs.names, attribute_names(inputs), strict=True))

    def meet_the_rules(records: list[BaseModel]) -> list[BaseModel]:
        if not inputs.rules:
            return records
        columns = {name: np.asarray([getattr(r, attribute) for r in records]) for name, attribute in attributes.items()}
        for name, rule in inputs.rules.items():
            try:
                broken = np.flatnonzero(~expressions.evaluate(rule, columns))
            except Exception as exc:
                raise ValueError(f"the rule {name} ({rule}) cannot be checked on these records: {exc}") from exc
            if broken.size:
                first = int(broken[0])
                shown = ", ".join(
                    f"{column}={columns[column][first].item()!r}" for column in sorted(expressions.names(rule))
                )
                raise ValueError(
                    f"record {first} ({shown}) breaks the rule {name}: {rule}"
                    + (f" (and {broken.size - 1} more records)" if broken.size > 1 else "")
                )
        return records

    return Annotated[list[record], Field(min_length=1, max_length=MAX_RECORDS), AfterValidator(meet_the_rules)]  # type: ignore[valid-type]


def columns_of_records(records: Sequence[BaseModel], inputs: Inputs) -> dict[str, list[Any]]:
    """Column lists, one per feature, from validated records."""
    return {
        name: [getattr(record, attribute) for record in records]
        for name, attribute in zip(inputs.names, attribute_names(inputs), strict=True)
    }


class Predictions(BaseModel):
    """Predicted target values, one per record and in the same order."""

    request_id: str
    model_version: str
    predictions: list[float]


class ShadowInfo(BaseModel):
    """The challenger: scored on the same records off the request path, logged beside the answers, never answered."""

    model_version: str
    bento_model: str
    backend: Literal["onnx", "scikit-learn"] | None  # None: it could not be loaded (see `problem`)
    problem: str | None = None


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
    onnx_max_gap: float | None  # ONNX vs the pipeline on the golden cases: |difference| / max(1, |value|)
    dataset: str
    target: str
    unit: str
    frequency: str  # what one record covers: hour, half-hour, day...
    features: list[str]
    inputs: dict[str, Any]  # the whole contract (`declaration.Inputs`): types, ranges, categories, rules
    example: dict[str, Any]  # one valid record (a golden case), for callers and probes
    max_records: int = MAX_RECORDS
    shadow: ShadowInfo | None = None  # the challenger scored beside the model, when the bento carries one
