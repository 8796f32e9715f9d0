"""Send feedback to a running Flywheel app in one plain HTTP call: `send_feedback`.

The app serves `POST /feedback/<slug>` (`demos.feedback_route`) beside its Gradio endpoints; it
takes what `feedback_<slug>` takes and runs the same checks, without Gradio's queue. Generate
with `gradio_client` as usual and pass back the `served_by` that came with the output (it holds
the output's signed ticket). Only `httpx` is needed here (Gradio depends on it).

Example:
    >>> from gradio_client import Client
    >>> url = "http://127.0.0.1:7860/"
    >>> client = Client(url)                                                        # doctest: +SKIP
    >>> text, served_by = client.predict(prompt="Advice for founders", api_name="/generate_tweet")  # doctest: +SKIP
    >>> send_feedback(url, "tweet", inputs={"prompt": "Advice for founders"}, output=text,  # doctest: +SKIP
    ...               ratings={"relevance": 5, "clarity": 4, "originality": 3, "engagement": 4},
    ...               served_by=served_by)
    'Thanks! Saved your rating (record 1f0c9a2e).'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

FEEDBACK_PATH = "/feedback/"
"""The route is `FEEDBACK_PATH + slug`."""
SESSION_KEY = "session"
"""The optional body field naming the client's session (see `demos.feedback_route`)."""


class FeedbackRefused(Exception):
    """The app refused the feedback: `status` is the HTTP status, `message` the app's one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{message} (HTTP {status})")
        self.status = status
        self.message = message


def send_feedback(url: str, slug: str, *, inputs: Mapping[str, str], served_by: Any, output: str | None = None,
                  flag: str | None = None, corrected_output: str | None = None,
                  ratings: Mapping[str, int] | None = None, answers: tuple[str, str] | None = None,
                  vote: str | None = None, session: str | None = None, http: httpx.Client | None = None,
                  timeout: float = 30.0) -> str:
    """Send one feedback on an output of `slug` to the app at `url`; return its confirmation.

    Args:
        url: the app's address, e.g. `http://127.0.0.1:7860/` (a Space: `https://<owner>-<name>.hf.space/`).
        inputs: the task's inputs by field name, as sent to `generate_<slug>`.
        served_by: the served_by `generate_<slug>` returned with the output(s), unchanged.
        output: the output as returned (every tab but the arena).
        flag, corrected_output: a flag and/or a corrected output (flag-and-edit tabs).
        ratings: each quality from 1 to 5 (the tweet tab).
        answers, vote: answers A and B as returned, and the vote (the arena).
        session: any string of yours that groups your feedback as a browser session would.
        http: an `httpx.Client` to reuse its connections (many calls); its cookies go along too
            (the "Sign in with Hugging Face" session, on an app that requires sign-in).

    Raises:
        FeedbackRefused: the app refused it (bad input, ticket, sign-in, quota), with the reason.
    """
    body: dict[str, Any] = {**inputs, "served_by": served_by}
    optional = {"output": output, "flag": flag, "corrected_output": corrected_output, "vote": vote,
                SESSION_KEY: session}
    body.update({name: value for name, value in optional.items() if value is not None})
    body.update(ratings or {})
    if answers is not None:
        body["answer_a"], body["answer_b"] = answers
    address = f"{url.rstrip('/')}{FEEDBACK_PATH}{slug}"
    response = (http.post(address, json=body, timeout=timeout) if http is not None
                else httpx.post(address, json=body, timeout=timeout))
    try:
        answer = response.json()
    except ValueError:  # not the app answering (a proxy's error page, a wrong URL)
        answer = None
    if not isinstance(answer, dict):
        answer = {}
    if response.status_code != 200 or "message" not in answer:
        raise FeedbackRefused(response.status_code, str(answer.get("error") or response.text[:200]))
    return str(answer["message"])
