"""A model named the way the project names it, wherever it is kept.

- a registry version, `3` or `v3`, or an alias, `production` or `candidate` (the MLflow store `forkcast promote` and
  `forkcast history` use: `.mlflow/` or MLFLOW_TRACKING_URI);
- a bento tag, `forkcast:v3-1a2b3c4d5e6f` (the model it serves), or a model tag of the project's BentoML store,
  `forkcast-demand:v3-…` or `forkcast-challenger:v5-…` (`bentoml models list`, with BENTOML_HOME=.bentoml).

A name that matches none is an `UnknownVersionError` that lists the names that would have worked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from forkcast import paths
from forkcast.serving import build
from forkcast.serving.build import BuildError, ModelSource

if TYPE_CHECKING:
    from forkcast.config import Params

VERSION_NUMBER = re.compile(r"[vV]?(\d+)")
SHOWN = 8  # bentos listed in an error, newest first


class UnknownVersionError(BuildError):
    """No model answers to that name; the message lists those that do."""


@dataclass(frozen=True)
class Resolved:
    """A model found by its name: what to score with, and how to call it in a report."""

    reference: str  # as given
    label: str  # `v3 (production)`, `forkcast:v3-1a2b… (model version 3)`
    where: str  # registry or bento store
    source: ModelSource

    @property
    def model_version(self) -> str:
        return str(self.source.lineage.get("model_version") or "unregistered")


def resolve(reference: str, params: Params) -> Resolved:
    """The model `reference` names; UnknownVersionError (listing the known names) when none does."""
    text = reference.strip()
    if ":" in text:
        return _from_store(text, params)
    number = VERSION_NUMBER.fullmatch(text)
    return _from_registry(text, params, version=number.group(1) if number else None)


def _from_store(tag: str, params: Params) -> Resolved:
    name = tag.split(":", 1)[0]
    try:
        if name == build.BENTO_NAME:
            model = build.describe(tag).model
            source = build.from_bento_model(model)
            return Resolved(tag, f"{tag} (model version {source.lineage.get('model_version')})", "bento store", source)
        source = build.from_bento_model(tag)
    except BuildError as exc:
        raise UnknownVersionError(f"no bento or model {tag} in the project's BentoML store. {known(params)}") from exc
    return Resolved(tag, f"{tag} (model version {source.lineage.get('model_version')})", "bento store", source)


def _registry_exists() -> bool:
    from forkcast.model.registry import is_local, tracking_uri

    uri = tracking_uri(paths.LOCAL_MLFLOW_DIR)
    return not is_local(uri) or (paths.LOCAL_MLFLOW_DIR / "mlflow.db").exists()


def _from_registry(reference: str, params: Params, *, version: str | None) -> Resolved:
    if not _registry_exists():
        raise UnknownVersionError(f"no model registry yet ({paths.LOCAL_MLFLOW_DIR}/): '{reference}' names none of its "
                                  f"versions. {known(params)}")  # fmt: skip
    try:
        source = build.from_mlflow(params, version=version) if version else build.from_mlflow(params, alias=reference)
    except BuildError as exc:
        raise UnknownVersionError(f"'{reference}' names no registered version. {known(params)}") from exc
    number = str(source.lineage.get("model_version"))
    aliases = _aliases(params).get(number, [])
    label = f"v{number}" + (f" ({', '.join(aliases)})" if aliases else "")
    return Resolved(reference, label, "registry", source)


def _aliases(params: Params) -> dict[str, list[str]]:
    """Each registered version's aliases."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        found = MlflowClient().get_registered_model(params.tracking.registered_model).aliases
    except MlflowException:
        return {}
    aliases: dict[str, list[str]] = {}
    for alias, number in sorted(found.items()):
        aliases.setdefault(str(number), []).append(alias)
    return aliases


def registry_versions(params: Params) -> list[str]:
    """The registered versions, newest first, each with its aliases: `v2 (candidate)`."""
    if not _registry_exists():
        return []
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from forkcast.model.registry import use_tracking

    use_tracking(paths.LOCAL_MLFLOW_DIR, params.tracking.experiment)
    try:
        found = MlflowClient().search_model_versions(f"name = '{params.tracking.registered_model}'")
    except MlflowException:
        return []
    aliases = _aliases(params)
    numbers = sorted({str(version.version) for version in found}, key=int, reverse=True)
    return [f"v{number}" + (f" ({', '.join(aliases[number])})" if number in aliases else "") for number in numbers]


def bento_tags() -> list[str]:
    """The project's bentos, newest first."""
    build.use_project_store()
    import bentoml

    bentos = sorted(bentoml.bentos.list(build.BENTO_NAME), key=lambda bento: bento.creation_time, reverse=True)
    return [str(bento.tag) for bento in bentos]


def known(params: Params) -> str:
    """What names would have worked, in a sentence."""
    listed = registry_versions(params)
    bentos = bento_tags()
    registry = (f"the registry holds {params.tracking.registered_model} {', '.join(listed)}" if listed
                else f"the registry holds no version of {params.tracking.registered_model}")  # fmt: skip
    if bentos:
        more = f" and {len(bentos) - SHOWN} older" if len(bentos) > SHOWN else ""
        store = f"the project's BentoML store holds {', '.join(bentos[:SHOWN])}{more}"
    else:
        store = "the project's BentoML store holds no bento (`forkcast build`)"
    return f"Known: {registry}; {store}."
