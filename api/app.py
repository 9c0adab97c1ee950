"""The one Flask API every backend sits behind: validate, enqueue through `dispatch.submit`, report status.

The API is identical for every library, so differences in what Locust measures come from the queue, not
from the web tier. It parses JSON only (never form data, never pickle), checks every task argument
against `workload.CATALOGUE` before anything reaches a broker, and answers every error as JSON: a client
mistake is a 4xx naming the field, an unreachable broker is a 503, and a 500 means a bug in this code
or in a backend. The contract, with examples, is in the README ("The API").

Routes: ``POST /tasks``, ``GET /tasks/<id>``, ``GET /healthz``, ``GET /queues``, and the well-known
Flask + Celery tutorial's ``GET /add/<x>/<y>`` and ``GET /task_status/<id>``, kept so its clients work
unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, TypeVar

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from backends import dispatch, workload
from backends.base import (
    BackendError,
    BackendUnavailable,
    EnqueueReceipt,
    QueueBackend,
    TaskStatus,
    UnsupportedOption,
)

#: Largest request body accepted, in bytes (2 MiB); a larger one is answered 413 before it is parsed.
MAX_BODY_BYTES = 2 * 1024 * 1024

#: Optional request header: when the load generator meant to send this request, in unix nanoseconds.
#: Stored as the task's ``scheduled_ns`` so end-to-end latency is anchored at the schedule.
SCHEDULED_AT_HEADER = "X-Scheduled-At"

#: Optional request header: the load generator's own id for this request (letters, digits, ``.``, ``_``,
#: ``-``, ``:``; at most 64). Stored in the task's ``sent`` ledger row as ``request_id``, so a request
#: whose answer the generator never saw (unanswered when the load stopped) can be found in the ledger.
REQUEST_ID_HEADER = "X-Request-Id"

#: The fields a ``POST /tasks`` body may have.
BODY_FIELDS = ("task", "args", "queue")

#: Our states -> the Celery state names the tutorial's clients expect.
TUTORIAL_STATES: dict[str, str] = {
    "queued": "PENDING",
    "started": "STARTED",
    "success": "SUCCESS",
    "failure": "FAILURE",
}

#: `app.extensions` key under which the app keeps its backend.
BACKEND_EXTENSION = "queuebench.backend"

# Plain ASCII digits only: int() alone would also take "+5", " 5", "1_000" and other scripts' digits.
_NS_RE = re.compile(r"[0-9]{1,19}")
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_PATH_INT_RE = re.compile(r"-?[0-9]{1,20}")
_MAX_NS = 2**63 - 1

T = TypeVar("T")


class ApiError(Exception):
    """A request the API refuses on purpose: answered as ``{"error": message}`` with `status`."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status


# --- request validation ----------------------------------------------------------------------------


class _DuplicateKey(ValueError):
    pass


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # {"ms": 1, "ms": 99999} would otherwise silently keep the last value.
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_object(body: bytes, *, content_type_is_json: bool,
                      content_encoding: str | None = None) -> dict[str, Any]:
    """The request body as a JSON object, or `ApiError` (400) saying what is wrong with it.

    Strict JSON: no NaN/Infinity, no duplicate keys. Deep nesting and over-long integers are
    client errors too, not crashes.
    """
    if not content_type_is_json:
        raise ApiError("Content-Type must be application/json")
    if content_encoding not in (None, "", "identity"):
        raise ApiError(f"Content-Encoding {content_encoding[:40]!r} is not supported: send the JSON uncompressed")
    if not body.strip():
        raise ApiError("the request body must be a JSON object, e.g. {\"task\": \"noop\"}")
    try:
        value = json.loads(body, object_pairs_hook=_object_without_duplicates, parse_constant=_reject_constant)
    except RecursionError:
        raise ApiError("the request body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, over-long integers, duplicate keys
        raise ApiError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ApiError(f"the request body must be a JSON object, not {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _shown(value: Any) -> str:
    """A short rendering of a client's value for an error message (never the whole of a big value)."""
    return json.dumps(value[:40]) if isinstance(value, str) else _json_type(value)


def _listed(names: list[str], limit: int = 5) -> str:
    """Names for an error message, the first `limit` of them (a body may hold thousands)."""
    shown = ", ".join(name[:40] for name in names[:limit])
    return f"{shown} and {len(names) - limit} more" if len(names) > limit else shown


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not 1


def validate_args(task: str, args: Any) -> dict[str, int]:
    """`args` checked against ``workload.CATALOGUE[task]``: every listed argument present, each an integer
    (not a boolean, float or string) within its bounds, and nothing else. Raises `ApiError` naming
    every bad field."""
    specs = workload.CATALOGUE[task]
    if not isinstance(args, dict):
        raise ApiError(f"args must be a JSON object, not {_json_type(args)}")
    known = {spec.name for spec in specs}
    unknown = sorted(set(args) - known)
    problems = []
    if unknown:
        expected = f"expected: {', '.join(spec.name for spec in specs)}" if specs else "it takes none"
        problems.append(f"{_listed(['args.' + name for name in unknown])} "
                        f"{'is not an argument' if len(unknown) == 1 else 'are not arguments'} of {task} "
                        f"({expected})")
    clean: dict[str, int] = {}
    for spec in specs:
        bounds = f"an integer between {spec.low} and {spec.high}"
        if spec.name not in args:
            problems.append(f"args.{spec.name} is required ({bounds})")
            continue
        value = args[spec.name]
        if not _is_int(value) or not spec.low <= value <= spec.high:
            problems.append(f"args.{spec.name} must be {bounds}")
            continue
        clean[spec.name] = value
    if problems:
        raise ApiError("; ".join(problems))
    return clean


def validate_task_body(body: Mapping[str, Any], queues: tuple[str, ...]) -> tuple[str, dict[str, int], str | None]:
    """(task, args, queue) from a ``POST /tasks`` body, or `ApiError`. `queue` None: routing decides."""
    unknown = sorted(set(body) - set(BODY_FIELDS))
    if unknown:
        raise ApiError(f"unknown field{'s' if len(unknown) > 1 else ''} {_listed(unknown)}; "
                       f"a task request has: {', '.join(BODY_FIELDS)}")
    task = body.get("task")
    if not isinstance(task, str) or task not in workload.CATALOGUE:
        raise ApiError(f"task must be one of: {', '.join(workload.CATALOGUE)} "
                       f"(got {_shown(task) if 'task' in body else 'none'})")
    args = validate_args(task, body.get("args", {}))
    queue = body.get("queue")
    if queue is not None and (not isinstance(queue, str) or queue not in queues):
        raise ApiError(f"queue must be one of: {', '.join(queues)} (this configuration's queues), "
                       f"got {_shown(queue)}")
    return task, args, queue


def _one_header(environ: Mapping[str, Any], name: str) -> str | None:
    """A request header read straight from the WSGI environ (werkzeug's `Headers.getlist` walks every
    header of the request, on every request). A header sent twice arrives joined with a comma, which
    no valid value contains, so a repeat is refused by the value checks below."""
    return environ.get("HTTP_" + name.upper().replace("-", "_"))


def scheduled_ns_from(environ: Mapping[str, Any]) -> int | None:
    """The ``X-Scheduled-At`` header (unix nanoseconds) as an int; None when absent; `ApiError` when malformed."""
    value = _one_header(environ, SCHEDULED_AT_HEADER)
    if value is None:
        return None
    text = value.strip()
    if not _NS_RE.fullmatch(text) or int(text) > _MAX_NS:
        raise ApiError(f"{SCHEDULED_AT_HEADER} must be one non-negative integer: unix time in nanoseconds "
                       f"(got {value[:60]!r})")
    return int(text)


def request_id_from(environ: Mapping[str, Any]) -> str | None:
    """The ``X-Request-Id`` header; None when absent; `ApiError` when malformed or repeated."""
    value = _one_header(environ, REQUEST_ID_HEADER)
    if value is None:
        return None
    if not _REQUEST_ID_RE.fullmatch(value):
        raise ApiError(f"{REQUEST_ID_HEADER} must be one id of 1 to 64 letters, digits, '.', '_', ':' or '-' "
                       f"(got {value[:60]!r})")
    return value


def _path_int(name: str, text: str) -> int:
    """A path segment of the tutorial's ``/add/<x>/<y>``: any integer, negative ones too."""
    if not _PATH_INT_RE.fullmatch(text):
        spec = {s.name: s for s in workload.CATALOGUE["add"]}[name]
        raise ApiError(f"args.{name} must be an integer between {spec.low} and {spec.high}")
    return int(text)


# --- backend calls -----------------------------------------------------------------------------------


def _call_backend(backend: QueueBackend, call: Callable[[], T]) -> T:
    """Run `call`; when it fails with an error the backend did not classify, ask `ping` whether the broker
    is down, so an unreachable broker answers 503 even if the library's own error leaked through."""
    try:
        return call()
    except BackendError:
        raise
    except Exception as exc:
        try:
            backend.ping()
        except BackendUnavailable as unavailable:
            raise unavailable from exc
        raise


def _lookup(backend: QueueBackend, task_id: str) -> TaskStatus:
    """The backend's status for `task_id`, or `ApiError` 404 (not ours, or no record) / 409 (results off)."""
    if not dispatch.is_issued_id(task_id):
        raise ApiError(f"no task with id {task_id[:80]!r}: this API did not issue it", 404)
    if not backend.settings.results:
        raise ApiError(f"results are off for this configuration ({backend.name} with results=false): "
                       "task status is not stored, so it cannot be reported", 409)
    status = _call_backend(backend, lambda: backend.status(task_id))
    if status is None:
        raise ApiError(f"{backend.name} has no record of task {task_id} (it may have expired or been purged)", 404)
    return status


# --- the app -----------------------------------------------------------------------------------------


def _error(message: str, status: int) -> tuple[Response, int]:
    return jsonify({"error": message}), status


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> tuple[Response, int]:
        return _error(exc.message, exc.status)

    @app.errorhandler(BackendUnavailable)
    def unavailable(exc: BackendUnavailable) -> tuple[Response, int]:
        return _error(str(exc), 503)

    @app.errorhandler(UnsupportedOption)
    def unsupported(exc: UnsupportedOption) -> tuple[Response, int]:
        return _error(str(exc), 400)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response | HTTPException:
        if exc.code is None or exc.code < 400:  # redirects keep werkzeug's own response
            return exc
        if exc.code == 404:
            message = f"no route for {request.path[:200]}"
        elif exc.code == 405:
            allowed = ", ".join(getattr(exc, "valid_methods", None) or [])
            message = f"method {request.method} is not allowed on {request.path[:200]} (allowed: {allowed})"
        elif exc.code == 413:
            message = f"the request body is larger than {MAX_BODY_BYTES} bytes (2 MiB)"
        else:
            message = exc.description or exc.name
        response = exc.get_response()  # keeps headers such as Allow
        response.set_data(json.dumps({"error": message}, separators=(",", ":")))
        response.content_type = "application/json"
        return response

    @app.errorhandler(Exception)
    def server_bug(exc: Exception) -> tuple[Response, int]:
        # Every client mistake is an ApiError or HTTPException above: reaching here is a bug, so log it.
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        return _error(f"internal server error ({type(exc).__name__}); see the API log", 500)


def create_app(backend: QueueBackend) -> Flask:
    """The API for one configuration, sending every task through `backend`."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions[BACKEND_EXTENSION] = backend
    _register_error_handlers(app)

    def submit(task: str, args: Mapping[str, int], queue: str | None) -> EnqueueReceipt:
        scheduled_ns = scheduled_ns_from(request.environ)
        request_id = request_id_from(request.environ)
        return _call_backend(backend, lambda: dispatch.submit(backend, task, args, queue=queue,
                                                               scheduled_ns=scheduled_ns, request_id=request_id))

    @app.post("/tasks")
    def post_task() -> tuple[Response, int, dict[str, str]]:
        """Enqueue one catalogue task: 202 with its id and queue."""
        body = parse_json_object(request.get_data(cache=False), content_type_is_json=request.is_json,
                                 content_encoding=request.content_encoding)
        task, args, queue = validate_task_body(body, backend.settings.queues)
        receipt = submit(task, args, queue)
        return (jsonify({"id": receipt.id, "status": "queued", "backend": backend.name, "queue": receipt.queue}),
                202, {"Location": f"/tasks/{receipt.id}"})

    @app.get("/tasks/<task_id>")
    def get_task(task_id: str) -> Response:
        """The library's own state and result for a task this API issued."""
        status = _lookup(backend, task_id)
        return jsonify({"id": status.id, "status": status.status, "result": status.result,
                        "error": status.error})

    @app.get("/add/<x>/<y>")
    def tutorial_add(x: str, y: str) -> tuple[Response, int]:
        """The tutorial's route: enqueue ``add(x, y)`` (negative integers welcome)."""
        args = validate_args("add", {"x": _path_int("x", x), "y": _path_int("y", y)})
        receipt = submit("add", args, None)
        return jsonify({"task_id": receipt.id, "status": "Task Queued"}), 202

    @app.get("/task_status/<task_id>")
    def tutorial_status(task_id: str) -> Response:
        """The tutorial's status route, in Celery's state names; a failure's result is its error text."""
        status = _lookup(backend, task_id)
        result = status.error if status.status == "failure" else status.result
        return jsonify({"task_id": status.id, "status": TUTORIAL_STATES[status.status], "result": result})

    @app.get("/healthz")
    def healthz() -> tuple[Response, int]:
        """200 only when the broker answers the backend's ping."""
        try:
            backend.ping()
        except BackendUnavailable as exc:
            return jsonify({"status": "unavailable", "backend": backend.name, "error": str(exc)}), 503
        except Exception as exc:  # a health check reports unhealthy; the log keeps the traceback
            app.logger.exception("ping of %s failed unexpectedly", backend.name)
            return jsonify({"status": "unavailable", "backend": backend.name,
                            "error": f"{type(exc).__name__}: {exc}"}), 503
        return jsonify({"status": "ok", "backend": backend.name}), 200

    @app.get("/queues")
    def queues() -> Response:
        """Messages waiting per queue of this configuration."""
        depths = _call_backend(backend, backend.queue_depths)
        return jsonify({"backend": backend.name, "queues": dict(depths)})

    return app
