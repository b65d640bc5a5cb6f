"""The prediction service (BentoML 1.4 class service), built into a bento by `forkcast build`.

Endpoints (all JSON):
- `POST /predict` with `{"records": [...]}`: 1 to 1,000 records; bad input gets a 400 naming the field
- `POST /metadata`: the model version, lineage and test metrics being served
- `GET /readyz`, `/livez` (health), `/metrics` (Prometheus), `/docs.json` (OpenAPI)

Runtime settings come from the environment, which `forkcast deploy` sets:
`FORKCAST_INFERENCE_LOG` (a directory or s3:// URI), `FORKCAST_ENVIRONMENT` (a label in the log),
`FORKCAST_INFERENCE_SPILL` (where rows go while the log's sink fails), `FORKCAST_INFERENCE_FLUSH_SECONDS`
(how often the log is written: 5), `FORKCAST_INFERENCE_BUFFER_ROWS` (rows a worker holds while the sink fails:
20,000), `FORKCAST_BACKEND=scikit-learn` to bypass ONNX Runtime, `FORKCAST_WORKERS` (worker processes, one per
core: 2; a deployment sets its CPU limit's whole cores), `FORKCAST_SHADOW_MODEL` (a challenger's model tag: a bento
built with `forkcast build --challenger` sets it; empty turns the shadow off), `FORKCAST_SHADOW_MAX_SHARE` (the share of
a worker's time the challenger may use before requests are logged without it: 0.1).

With a challenger, every answered request is also scored by it off the request path (serving/shadow.py) and logged with
both predictions; the answers and their latency do not depend on it, and its failures are counted on /metrics.

`FORKCAST_API_TOKEN`, when set and not empty, closes `POST /predict` and `/metadata` to callers that do not send
`Authorization: Bearer <token>`: they get a 401 naming the header, with `WWW-Authenticate: Bearer`. Health,
/metrics and the docs stay open, so probes and scrapers need no token; /docs.json then declares the scheme.

The request's fields come from the model: its input contract (`inputs.json`, from `dataset.yaml` at training) is
read from the model's directory when this module is imported, because the API's types are declared from it.
"""

from __future__ import annotations

import gc
import hmac
import logging
import os
import uuid
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import anyio
import bentoml
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from threadpoolctl import threadpool_limits

from forkcast.serving import contract, predictor
from forkcast.serving.contract import (
    BENTO_MODEL_NAME,
    MAX_HEADER_BYTES,
    MODEL_TAG_ENV,
    REQUEST_ID_HEADER,
    REQUEST_ID_PATTERN,
    SHADOW_MODEL_ENV,
    SPILL_ENV,
    WORKERS_ENV,
    ModelInfo,
    Predictions,
    SettingError,
    ShadowInfo,
)
from forkcast.serving.inference_log import (
    BUFFER_ENV,
    DEFAULT_SINK,
    FLUSH_ENV,
    SINK_ENV,
    InferenceLog,
    inference_log_metrics,
)
from forkcast.serving.shadow import MAX_SHARE, Shadow, shadow_metrics

log = logging.getLogger("bentoml.forkcast")  # bentoml prints the INFO lines of its own loggers

JSON = b"application/json"
DOCS_ROUTE = "/docs.json"  # bentoml's OpenAPI document

MODEL = bentoml.models.BentoModel(os.environ.get(MODEL_TAG_ENV, f"{BENTO_MODEL_NAME}:latest"))
SHADOW_SHARE_ENV = "FORKCAST_SHADOW_MAX_SHARE"


def _contract(model: bentoml.models.BentoModel) -> predictor.Contract:
    stored = model.stored
    if stored is None:
        raise RuntimeError(f"no model {model.tag} in the BentoML store: build the bento first (`forkcast build`)")
    return predictor.contract(Path(stored.path))


CONTRACT = _contract(MODEL)
Records = contract.records_type(CONTRACT.inputs, CONTRACT.example)


def _shadow_model() -> bentoml.models.BentoModel | None:
    """The challenger's model, when `SHADOW_MODEL_ENV` names one: a class attribute, so that the build packs it into
    the bento beside the served model."""
    tag = os.environ.get(SHADOW_MODEL_ENV, "").strip()
    if not tag:
        return None
    try:
        return bentoml.models.BentoModel(tag)
    except ValueError as exc:
        raise SettingError(f"{SHADOW_MODEL_ENV}={tag!r} is not a model tag (name:version)") from exc


SHADOW = _shadow_model()


def _number(name: str, default: float, *, whole: bool = False) -> float:
    """A positive number (a whole one with `whole`) from the environment, or a start-up error naming the variable."""
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        number = float(int(value)) if whole else float(value)
    except ValueError:
        number = -1
    if number <= 0:
        raise SettingError(f"{name}={value!r} must be a positive {'whole number' if whole else 'number'}")
    return number


class JsonBodiesOnly:
    """Answer 415 to a POST whose body is declared as anything but JSON.

    BentoML would otherwise try its multipart decoder on such a body and fail with a 500.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            declared = dict(scope["headers"]).get(b"content-type", JSON)
            if declared.split(b";")[0].strip().lower() != JSON:
                detail = {"type": "unsupported_media_type", "loc": ["header", "content-type"], "msg": "must be JSON"}
                body = {"error": f"send JSON (Content-Type: application/json), not {declared.decode('latin-1')!r}"}
                await JSONResponse({**body, "detail": [detail]}, status_code=415)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class HeaderLimits:
    """Refuse oversized headers (431) and a request id that is not a short token (400), before any work is done:
    an id is written into every logged row of its request and echoed back, so a huge one would multiply."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            size = sum(len(name) + len(value) for name, value in headers)
            if size > MAX_HEADER_BYTES:
                detail = {"type": "too_large", "loc": ["header"], "msg": f"at most {MAX_HEADER_BYTES} bytes"}
                body = {"error": f"the request's headers hold {size:,} bytes; at most {MAX_HEADER_BYTES:,} are read"}
                await JSONResponse({**body, "detail": [detail]}, status_code=431)(scope, receive, send)
                return
            given = dict(headers).get(REQUEST_ID_HEADER.encode())
            if given is not None and not REQUEST_ID_PATTERN.fullmatch(given.decode("latin-1")):
                detail = {"type": "value_error", "loc": ["header", REQUEST_ID_HEADER],
                          "msg": "1 to 128 letters, digits or . _ : -"}  # fmt: skip
                body = {"error": f"{REQUEST_ID_HEADER} must be 1 to 128 letters, digits or . _ : - ({len(given):,} "
                        "bytes given); leave it out and the service makes one"}  # fmt: skip
                await JSONResponse({**body, "detail": [detail]}, status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BearerToken:
    """With a `token`, answer 401 to a call of `routes` (the API's) without `Authorization: Bearer <token>`, before
    any work is done. Other routes (health, /metrics, the docs) stay open; /docs.json is then served with the scheme
    declared (see `secured`). Without one, everything passes."""

    def __init__(
        self,
        app: ASGIApp,
        token: str | None = None,
        routes: Collection[str] = (),
        document: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.app = app
        self.expected = token.encode("ascii") if token else None
        self.routes = frozenset(routes)
        self.document = document

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.expected is None:
            await self.app(scope, receive, send)
            return
        path = scope["path"].rstrip("/") or "/"
        if path in self.routes:
            given = dict(scope["headers"]).get(b"authorization")
            scheme, _, credentials = (given or b"").partition(b" ")
            if given is None or scheme.lower() != b"bearer" or not hmac.compare_digest(credentials, self.expected):
                missing = given is None
                problem = "no Authorization header" if missing else "the Authorization header is not the bearer token"
                detail = {"type": "missing" if missing else "invalid_token", "loc": ["header", "authorization"],
                          "msg": "must be Bearer <the service's token>"}  # fmt: skip
                body = {"error": f"{problem}: send the header Authorization: Bearer <token> (the service's "
                        f"{contract.TOKEN_ENV})"}  # fmt: skip
                challenge = "Bearer" if missing else 'Bearer error="invalid_token"'
                response = JSONResponse({**body, "detail": [detail]}, 401, headers={"WWW-Authenticate": challenge})
                await response(scope, receive, send)
                return
        elif path == DOCS_ROUTE and scope["method"] == "GET" and self.document is not None:
            await JSONResponse(secured(self.document(), self.routes))(scope, receive, send)
            return
        await self.app(scope, receive, send)


def secured(document: dict[str, Any], routes: Collection[str]) -> dict[str, Any]:
    """The OpenAPI `document` with a bearer scheme required by the operations of `routes`, and their 401.

    bentoml 1.4 generates the document from classes with no place for it (`Components` and `Operation` in
    bentoml/_internal/service/openapi/specification.py: "Not yet supported: securitySchemes", "security").
    """
    unauthorized = {
        "description": f"No or a wrong `Authorization: Bearer <token>` (the service's {contract.TOKEN_ENV})",
        "content": {"application/json": {"schema": {
            "type": "object", "required": ["error", "detail"],
            "properties": {"error": {"type": "string"}, "detail": {"type": "array", "items": {"type": "object"}}},
        }}},
    }  # fmt: skip
    paths = {
        path: {
            method: {**operation, "security": [{"bearer": []}],
                     "responses": {**operation.get("responses", {}), "401": unauthorized}}
            if isinstance(operation, dict) else operation
            for method, operation in item.items()
        } if path in routes else item
        for path, item in document.get("paths", {}).items()
    }  # fmt: skip
    scheme = {"type": "http", "scheme": "bearer", "description": f"The service's {contract.TOKEN_ENV}"}
    components = document.get("components", {})
    schemes = {**components.get("securitySchemes", {}), "bearer": scheme}
    return {**document, "paths": paths, "components": {**components, "securitySchemes": schemes}}


class RecycleConnections:
    """Ask a client to reconnect after `every` requests on one keep-alive connection.

    The workers accept from one shared socket and the first to wake takes every pending
    connection, so a client with a few long-lived connections can land all of them on one
    worker while the other core idles (measured: half the throughput). A reconnect now and
    then is usually accepted by the idle worker, which rebalances the load within a second.
    """

    def __init__(self, app: ASGIApp, every: int = 100) -> None:
        self.app = app
        self.every = every
        self._served: dict[Any, int] = {}  # requests per open connection (client host and port)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] != "http" or client is None:
            await self.app(scope, receive, send)
            return
        served = self._served.get(client, 0) + 1
        if len(self._served) > 10_000:  # mostly connections closed long ago: forget them all
            self._served.clear()
        if served < self.every:
            self._served[client] = served
            await self.app(scope, receive, send)
            return
        self._served.pop(client, None)

        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, closing)


@bentoml.service(
    name="forkcast",
    workers=int(_number(WORKERS_ENV, 2, whole=True)),  # one per core; each scores with one thread (see __init__)
    # Requests take milliseconds (1,000 rows: ~15 ms). bentoml keeps each request alive until its
    # timeout fires, and a long timeout filled the heap: garbage collections of 100+ ms (the p99).
    traffic={"timeout": 5, "max_concurrency": 256},
    http={"cors": {"enabled": False}},
)
class Forecaster:
    bento_model = MODEL
    shadow_model = SHADOW  # None without a challenger

    def __init__(self) -> None:
        # Workers are the parallelism: more threads per worker oversubscribe the cores.
        threadpool_limits(limits=1)
        stored = self.bento_model
        lineage: dict[str, Any] = dict(stored.info.metadata)
        self.predictor = predictor.load(
            Path(stored.path),
            CONTRACT.inputs.target,
            onnx_tolerance=float(lineage.get("onnx_tolerance", 0.001)),
            prefer_onnx=os.environ.get("FORKCAST_BACKEND", "onnx") != "scikit-learn",
        )
        self.info = ModelInfo(
            model_name=str(lineage.get("model_name", BENTO_MODEL_NAME)),
            model_version=str(lineage.get("model_version", "unregistered")),
            bento_model=str(stored.tag),
            run_id=lineage.get("run_id"),
            data_hash=lineage.get("data_hash"),
            git_commit=lineage.get("git_commit"),
            trained_at=lineage.get("trained_at"),
            metrics={str(key): float(value) for key, value in dict(lineage.get("metrics", {})).items()},
            backend=self.predictor.backend,
            onnx_max_gap=self.predictor.onnx_max_gap,
            dataset=CONTRACT.inputs.dataset,
            target=CONTRACT.inputs.target.name,
            unit=CONTRACT.inputs.target.unit,
            frequency=CONTRACT.inputs.frequency.period,
            features=list(CONTRACT.inputs.names),
            inputs=CONTRACT.inputs.model_dump(mode="json"),
            example=CONTRACT.example,
        )
        spill = os.environ.get(SPILL_ENV)
        self.inference_log = InferenceLog(
            os.environ.get(SINK_ENV, DEFAULT_SINK),
            CONTRACT.inputs,
            environment=os.environ.get("FORKCAST_ENVIRONMENT", "local"),
            spill_dir=Path(spill) if spill else None,
            flush_seconds=_number(FLUSH_ENV, 5.0),
            max_rows=int(_number(BUFFER_ENV, 20_000, whole=True)),
            counters=inference_log_metrics(),
            shadow=SHADOW is not None,
        )
        self.shadow = self._start_shadow()
        log.info(
            "serving %s version %s with %s, code from %s",
            self.info.model_name,
            self.info.model_version,
            self.info.backend,
            Path(__file__).resolve().parent,
        )
        # Start-up objects (the model, libraries) live as long as the worker: keep the collector off them.
        gc.collect()
        gc.freeze()

    def _start_shadow(self) -> Shadow | None:
        """The challenger scoring beside the model, or None without one. A challenger that cannot be loaded does not
        stop the service: it is reported in the log, /metadata and /metrics, and its requests are counted as failed."""
        if SHADOW is None:
            return None
        scorer, version, backend, problem = None, str(SHADOW.tag.version or "unknown"), None, None
        try:
            stored = self.shadow_model
            if stored is None:
                raise RuntimeError("no challenger model")
            version = str(dict(stored.info.metadata).get("model_version", version))
            loaded = predictor.load(
                Path(stored.path),
                predictor.contract(Path(stored.path)).inputs.target,
                onnx_tolerance=float(stored.info.metadata.get("onnx_tolerance", 0.001)),
                prefer_onnx=os.environ.get("FORKCAST_BACKEND", "onnx") != "scikit-learn",
            )
            scorer, backend = loaded.predict, loaded.backend
        except Exception as error:
            problem = f"{type(error).__name__}: {error}".splitlines()[0]
            log.error("shadow: the challenger %s could not be loaded (%s); serving without it", SHADOW.tag, problem)
        self.info = self.info.model_copy(
            update={"shadow": ShadowInfo(model_version=version, bento_model=str(SHADOW.tag), backend=backend,
                                         problem=problem)}
        )  # fmt: skip
        if backend is not None:
            log.info("shadow: challenger version %s (%s) scores every request beside the model", version, backend)
        return Shadow(
            scorer, version, self.inference_log, problem=problem, counters=shadow_metrics(),
            max_share=min(1.0, _number(SHADOW_SHARE_ENV, MAX_SHARE)),
        )  # fmt: skip

    @bentoml.api(route="/predict")
    async def predict(self, records: Records, ctx: bentoml.Context) -> Predictions:  # type: ignore[valid-type]
        """The predicted target of each record in `records`, in the same order (see /metadata for its unit)."""
        request_id = ctx.request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        columns = contract.columns_of_records(records, CONTRACT.inputs)
        if self.predictor.onnx is not None:
            predictions = self.predictor.predict(columns)  # microseconds: cheaper than a thread hop
        else:
            predictions = await anyio.to_thread.run_sync(self.predictor.predict, columns)
        if self.shadow is not None:  # queued for the challenger, logged once it has scored them
            self.shadow.submit(request_id, self.info.model_version, columns, predictions)
        else:
            self.inference_log.append(request_id, self.info.model_version, columns, predictions)
        ctx.response.headers[REQUEST_ID_HEADER] = request_id
        return Predictions(
            request_id=request_id, model_version=self.info.model_version, predictions=predictions.tolist()
        )

    @bentoml.api(route="/metadata")
    async def metadata(self) -> ModelInfo:
        """The model being served: version, lineage, test metrics and prediction backend."""
        return self.info

    @bentoml.on_shutdown
    def close_inference_log(self) -> None:
        if self.shadow is not None:
            self.shadow.close()  # its last requests go to the log first
        self.inference_log.close()


def _openapi() -> dict[str, Any]:
    """The OpenAPI document bentoml serves at /docs.json, made afresh as bentoml does."""
    document: dict[str, Any] = Forecaster.openapi_spec.asdict()  # type: ignore[attr-defined]
    return document


# A bentoml Service at runtime. The first added runs first: an unauthorized call is refused before anything else.
# The token is read here, once: one a header cannot carry fails the start (raised as the app starts instead, it
# left `bentoml serve` running, still up after a minute).
API_ROUTES = [api.route for api in Forecaster.apis.values()]  # type: ignore[attr-defined]
Forecaster.add_asgi_middleware(  # type: ignore[attr-defined]
    BearerToken, token=contract.api_token(), routes=API_ROUTES, document=_openapi
)
Forecaster.add_asgi_middleware(JsonBodiesOnly)  # type: ignore[attr-defined]
Forecaster.add_asgi_middleware(HeaderLimits)  # type: ignore[attr-defined]
Forecaster.add_asgi_middleware(RecycleConnections)  # type: ignore[attr-defined]
