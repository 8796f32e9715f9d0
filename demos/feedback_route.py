"""`POST /feedback/<slug>`: feedback as one plain HTTP call, served beside Gradio by the same app.

`gradio_client` always joins Gradio's queue and follows the result over SSE, which costs far more
than the one row a feedback writes; this route answers in one request and response. It takes a
JSON object keyed by the parameter names of `feedback_<slug>` (`demos.feedback.feedback_parameters`),
plus an optional `session` (any string of the client's, standing in for a Gradio session: the
per-person quota key and the record's hashed session), and runs the very code the Gradio event
runs (`demos.feedback.FeedbackDesk.give`: ticket, quotas, sizes, sign-in, store). Who is asking comes
from the connection and `X-Forwarded-For` (with the app's proxy hops) and from the "Sign in with
Hugging Face" cookie of Gradio's session, as for the Gradio events. The client is
`demos.feedback_client.send_feedback`.

Answers: 200 `{"message": ...}`, or `{"error": "<one line>"}` with 400 (bad input), 401 (sign-in
required), 403 (ticket forged, expired, reused or for another output; feedback off), 404 (no such
task), 413 (body too large), 415 (not JSON), 429 (over a quota) or 503 (the store refused the row).

Requests run on the server's event loop (`FeedbackDesk.give` is async; the store fsyncs on a thread
of its own), so feedback never waits for a thread that generation holds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import gradio as gr
from gradio.oauth import _get_valid_oauth_info_from_session
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from demos.feedback import feedback_parameters
from demos.feedback_client import FEEDBACK_PATH, SESSION_KEY
from demos.handlers import Suite
from demos.quotas import visitor_from
from demos.refusals import Refusal
from tasks import TASKS

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
"""Larger bodies are refused unread: the longest honest one (two 20,000-character answers, the
inputs and a ticket, every character JSON-escaped) is well under this."""
MAX_SESSION_CHARS = 128


class FlywheelBlocks(gr.Blocks):
    """`gr.Blocks` that serves `routes` beside Gradio's own on every `launch()`.

    The routes go into the FastAPI app Gradio creates (`app_kwargs["routes"]`), ahead of Gradio's,
    so `python -m demos`, the Space and tests launching with `prevent_thread_lock=True` all get
    them. SSR is off unless asked for: in SSR mode Node fronts the port and forwards only Gradio's
    own paths to Python, so these routes would be unreachable.
    """

    def __init__(self, *, routes: Sequence[BaseRoute] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.extra_routes = list(routes)

    def launch(self, *args: Any, **kwargs: Any) -> Any:
        app_kwargs = dict(kwargs.pop("app_kwargs", None) or {})
        app_kwargs["routes"] = [*app_kwargs.get("routes", ()), *self.extra_routes]
        kwargs.setdefault("ssr_mode", False)
        return super().launch(*args, app_kwargs=app_kwargs, **kwargs)


def feedback_route(suite: Suite, *, proxy_hops: int = 0) -> Route:
    """The `POST /feedback/{slug}` route of `suite`; `proxy_hops` as in `demos.quotas.visitor_from`."""
    return Route(f"{FEEDBACK_PATH}{{slug}}", _FeedbackEndpoint(suite, proxy_hops=proxy_hops).handle,
                 methods=["POST"], name="feedback")


class _FeedbackEndpoint:
    def __init__(self, suite: Suite, *, proxy_hops: int) -> None:
        self.suite = suite
        self.proxy_hops = proxy_hops

    async def handle(self, request: Request) -> JSONResponse:
        task = TASKS.get(request.path_params["slug"])
        if task is None:
            return _error(404, f"No task {request.path_params['slug']!r}; the tasks are {', '.join(TASKS)}.")
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            # Also what keeps other sites' pages from posting here with a visitor's cookie: a
            # cross-site JSON request needs a CORS preflight, which Gradio grants only to its own origin.
            return _error(415, "Send the feedback as JSON (Content-Type: application/json).")
        body = await _read_body(request)
        if body is None:
            return _error(413, f"The request body is larger than {MAX_BODY_BYTES} bytes.")
        try:
            values = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _error(400, "The request body is not valid JSON.")
        problem = _shape_problem(values, [p.name for p in feedback_parameters(task)], task.slug)
        if problem:
            return _error(400, problem)
        visitor = replace(visitor_from(request, _username(request), proxy_hops=self.proxy_hops),
                          session=values.pop(SESSION_KEY, None))
        try:
            message = await self.suite.desk.give(task, values, visitor)
        except Refusal as refusal:
            return _error(refusal.status, refusal.message)
        except Exception:  # noqa: BLE001 - one line to the client, the traceback to the log
            logger.exception("Feedback on %s failed", task.slug)
            return _error(500, "Something went wrong while saving the feedback; it was not stored.")
        return JSONResponse({"message": message})


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _read_body(request: Request) -> bytes | None:
    """The body, or None as soon as it is over `MAX_BODY_BYTES` (the rest is never read)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _shape_problem(values: Any, names: list[str], slug: str) -> str | None:
    """Why `values` is not a JSON object of `names` (and `session`), or None; the values are checked later."""
    if not isinstance(values, dict):
        return f"The body must be a JSON object with the parameters of feedback_{slug}: {', '.join(names)}."
    unknown = sorted(set(values) - {*names, SESSION_KEY})
    if unknown:
        return f"Unknown field(s) {', '.join(unknown)}; feedback_{slug} takes {', '.join(names)} (and session)."
    session = values.get(SESSION_KEY)
    if session is not None and not (isinstance(session, str) and 0 < len(session) <= MAX_SESSION_CHARS):
        return f"session must be a string of 1 to {MAX_SESSION_CHARS} characters."
    return None


def _username(request: Request) -> str | None:
    """The signed-in Hugging Face username, read from Gradio's session cookie by Gradio's own rule
    (the one that gives the Gradio events their `gr.OAuthProfile`); None when not signed in."""
    session = request.scope.get("session") or {}  # Gradio installs the session only when sign-in is on
    info = _get_valid_oauth_info_from_session(session)
    return gr.OAuthProfile(info["userinfo"]).username if info else None
