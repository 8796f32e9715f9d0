"""How a request is refused: one sentence for the person, and the HTTP status the feedback route answers with."""

from __future__ import annotations

import gradio as gr

from hub.errors import FlywheelError
from tasks import InvalidInput


class Refusal(gr.Error):
    """A refused request: the sentence a person sees, and the HTTP status the feedback route answers with
    (400 bad input, 401 not signed in, 403 not vouched for by a ticket, 429 over a quota, 503 store down)."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message, print_exception=False)
        self.status = status


def refusal(message: str, *, status: int = 400) -> Refusal:
    """The error a person sees; no traceback in the server log (refusals are routine, and a flood
    of forged calls must not flood the log). Failures inside generation are logged separately."""
    return Refusal(message, status=status)


def user_message(error: BaseException) -> str:
    return str(error) if isinstance(error, (InvalidInput, FlywheelError)) else f"Something went wrong: {error}"
