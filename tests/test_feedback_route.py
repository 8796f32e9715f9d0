"""The plain HTTP feedback route (`POST /feedback/<slug>`) of a launched app, beside gradio_client."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradio_client import Client

from demos.app import build_app
from demos.feedback_client import FeedbackRefused, send_feedback
from demos.feedback_route import MAX_BODY_BYTES
from demos.quotas import Access, Limits
from hub.feedback.callback import FeedbackCallback
from hub.feedback.records import MAX_TEXT_CHARS
from hub.feedback.tickets import SECRET_ENV
from serving.engine import Engine
from serving.models import load_model
from tasks import TASKS
from tests.test_app import SETTINGS, example_args, serving
from tests.test_app_feedback import PROMPT, RATINGS, SECRET, expired, forged, records
from tests.test_batching import wait_until

VOLATILE = ("id", "created_at", "session")
"""What differs between two rows of the same feedback: a new id, the time, the (hashed) session."""


@pytest.fixture(scope="module")
def app(tiny_causal_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Client, Engine, Path]]:
    folder = tmp_path_factory.mktemp("feedback")
    feedback = FeedbackCallback(folder=folder)
    engine = Engine(load_model(str(tiny_causal_lm)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SECRET_ENV, SECRET)
        blocks = build_app(engine, feedback=feedback, access=Access(limits=Limits.off()))
    with serving(blocks) as url:
        yield url, Client(url, verbose=False), engine, folder
    feedback.close(push=False)


def tweet(client: Client) -> tuple[str, dict]:
    text, served = client.predict(PROMPT, *SETTINGS, api_name="/generate_tweet")
    return text, served


def rate(url: str, text: str, served: Any, **options: Any) -> str:
    return send_feedback(url, "tweet", inputs={"prompt": PROMPT}, output=text, ratings=RATINGS, served_by=served,
                         **options)


def post(url: str, slug: str, body: Any, **options: Any) -> httpx.Response:
    return httpx.post(f"{url.rstrip('/')}/feedback/{slug}", json=body, timeout=60, **options)


def without(row: dict, keys: tuple[str, ...] = VOLATILE) -> dict:
    return {key: value for key, value in row.items() if key not in keys}


# Each way of giving feedback through gradio_client's positional call and through `send_feedback`.
GIVEN = {
    "tweet": (lambda args, out: [*args, out[0], *RATINGS.values(), out[1]],
              lambda args, out: {"output": out[0], "ratings": RATINGS, "served_by": out[1]}),
    "detox": (lambda args, out: [*args, out[0], "toxic", "A cleaner continuation.", out[1]],
              lambda args, out: {"output": out[0], "flag": "toxic", "corrected_output": "A cleaner continuation.",
                                 "served_by": out[1]}),
    "arena": (lambda args, out: [*args, out[0], out[1], "B", out[2]],
              lambda args, out: {"answers": (out[0], out[1]), "vote": "B", "served_by": out[2]}),
}


@pytest.mark.parametrize("slug", list(GIVEN))
def test_route_stores_the_same_row_as_gradio_client(app: tuple, slug: str) -> None:
    url, client, _, folder = app
    args, (positional, keywords) = example_args(slug), GIVEN[slug]
    # Same inputs and seed: the same output twice, each with a ticket of its own.
    first, second = (client.predict(*args, *SETTINGS, api_name=f"/generate_{slug}") for _ in range(2))
    assert [x for x in first if isinstance(x, str)] == [x for x in second if isinstance(x, str)]
    before = len(records(folder, slug))
    via_gradio = client.predict(*positional(args, first), api_name=f"/feedback_{slug}")
    via_route = send_feedback(url, slug, inputs=dict(zip(TASKS[slug].field_names, args, strict=True)),
                              session="a script of mine", **keywords(args, second))
    assert via_gradio.startswith("Thanks!") and via_route.startswith("Thanks!")
    rows = records(folder, slug)[before:]
    half = len(rows) // 2
    assert half == (2 if slug == "detox" else 1)  # detox: a flag and an edit each
    assert [without(row) for row in rows[:half]] == [without(row) for row in rows[half:]]
    assert all(row["session"] for row in rows)
    assert rows[0]["session"] != rows[half]["session"]


@pytest.mark.parametrize("forgery, status, message", [
    ("payload edited", 403, "not one this server issued"),
    ("expired", 403, "has expired"),
    ("other output", 403, "not the one the server produced"),
    ("served-by a string", 400, r"served-by must be the JSON object .*\(got a string\)"),
])
def test_forged_and_expired_tickets_are_refused(app: tuple, forgery: str, status: int, message: str) -> None:
    url, client, _, folder = app
    text, served = tweet(client)
    bad_served, bad_text = {
        "payload edited": ({**served, "ticket": forged(served["ticket"], adapter="evil")}, text),
        "expired": (expired(served, text), text),
        "other output": (served, text + " and more"),
        "served-by a string": ("served", text),
    }[forgery]
    before = len(records(folder, "tweet"))
    with pytest.raises(FeedbackRefused, match=message) as refused:
        rate(url, bad_text, bad_served)
    assert refused.value.status == status
    assert len(records(folder, "tweet")) == before


def test_a_ticket_is_spent_by_either_path(app: tuple) -> None:
    url, client, _, _ = app
    text, served = tweet(client)
    assert rate(url, text, served).startswith("Thanks!")
    with pytest.raises(FeedbackRefused, match="already has your rating") as refused:
        rate(url, text, served)
    assert refused.value.status == 403
    with pytest.raises(Exception, match="already has your rating"):  # spent for the Gradio event too
        client.predict(PROMPT, text, *RATINGS.values(), served, api_name="/feedback_tweet")
    text, served = tweet(client)
    assert client.predict(PROMPT, text, *RATINGS.values(), served, api_name="/feedback_tweet").startswith("Thanks")
    with pytest.raises(FeedbackRefused, match="already has your rating"):
        rate(url, text, served)


def test_bad_and_oversize_requests_get_one_line_and_a_status(app: tuple) -> None:
    url, client, _, folder = app
    text, served = tweet(client)
    before = len(records(folder, "tweet"))
    body = {"prompt": PROMPT, "output": text, **RATINGS, "served_by": served}
    cases = [
        ("tweet", {**body, "output": "x" * (MAX_TEXT_CHARS + 1)}, 400, "longer than 20000 characters"),
        ("tweet", {**body, "prompt": "y" * 5000}, 403, "other inputs"),  # no output was served for these
        ("tweet", {**body, "prompt": "y" * (MAX_TEXT_CHARS + 1)}, 400, "longer than any generate call accepts"),
        ("tweet", {**body, "relevance": 9}, 400, "whole number from 1 to 5"),
        ("tweet", {**body, "rating": 5}, 400, "Unknown field.* rating; feedback_tweet takes prompt, output"),
        ("tweet", [body], 400, "must be a JSON object"),
        ("tweet", {**body, "session": 7}, 400, "session must be a string"),
        ("detox", {"prompt": PROMPT, "output": text, "flag": "toxic", "served_by": served}, 403,
         "another task or other inputs"),
        ("poem", body, 404, "No task 'poem'"),
    ]
    for slug, sent, status, message in cases:
        response = post(url, slug, sent)
        assert response.status_code == status, (slug, response.text[:300])
        error = response.json()["error"]
        assert "\n" not in error and re.search(message, error), error
    huge = httpx.post(f"{url}feedback/tweet", content=b"[" + b"1," * MAX_BODY_BYTES + b"1]",
                      headers={"content-type": "application/json"}, timeout=60)
    assert huge.status_code == 413 and "larger than" in huge.json()["error"]
    form = httpx.post(f"{url}feedback/tweet", data={"prompt": PROMPT}, timeout=60)
    assert form.status_code == 415 and "JSON" in form.json()["error"]
    assert len(records(folder, "tweet")) == before
    assert rate(url, text, served).startswith("Thanks!")  # none of them spent the ticket


def test_an_unknown_flag_is_refused_and_the_ticket_stays_unspent(app: tuple) -> None:
    url, client, _, folder = app
    args = example_args("detox")
    text, served, _ = client.predict(*args, *SETTINGS, api_name="/generate_detox")
    flagged = {"url": url, "slug": "detox", "inputs": {"prompt": args[0]}, "output": text, "served_by": served}
    before = len(records(folder, "detox"))
    with pytest.raises(FeedbackRefused, match="'hilarious' is not one of detox's flags") as refused:
        send_feedback(**flagged, flag="hilarious")
    assert refused.value.status == 400 and len(records(folder, "detox")) == before
    assert send_feedback(**flagged, flag="fine").startswith("Thanks!")


def test_route_feedback_completes_while_every_generation_slot_is_taken(app: tuple) -> None:
    url, client, engine, _ = app
    text, served = tweet(client)
    with engine._generate_lock:  # no generation can make progress until the block ends
        generations = [client.submit(PROMPT, 0, 50, 0.9, 1.0, 64, None, api_name="/generate_tweet")
                       for _ in range(engine.max_batch + 2)]  # more than the generation group admits
        wait_until(lambda: engine.waiting == engine.max_batch)
        assert rate(url, text, served).startswith("Thanks! Saved your rating")
        assert not any(job.done() for job in generations)
    assert all(job.result(timeout=300)[0] for job in generations)


def test_a_stalled_disk_holds_only_the_feedback_waiting_for_it_not_the_server(app: tuple,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The desk runs on the server's event loop; the fsync must not, or one slow disk stalls every visitor."""
    url, client, _, folder = app
    rate(url, *tweet(client))  # today's file exists: no directory to create and fsync
    outputs, before = [tweet(client) for _ in range(2)], len(records(folder, "tweet"))
    disk_free, real_fsync = threading.Event(), os.fsync

    def stalled_fsync(fd: int) -> None:
        disk_free.wait(120)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", stalled_fsync)
    with ThreadPoolExecutor(2) as pool:
        sent = [pool.submit(rate, url, *output) for output in outputs]
        wait_until(lambda: len(records(folder, "tweet")) == before + 2)  # written, not yet durable
        assert httpx.post(f"{url}feedback/nope", json={}, timeout=10).status_code == 404  # the loop is free
        assert not any(feedback.done() for feedback in sent)  # not acknowledged before the fsync
        disk_free.set()
        assert all(feedback.result(timeout=60).startswith("Thanks!") for feedback in sent)


def test_route_quotas_count_per_session_and_per_ip_behind_the_proxy(tiny_causal_lm: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    access = Access(limits=Limits.parse("feedback=2/hour,feedback-per-ip=3/hour"), proxy_hops=1)
    with FeedbackCallback(folder=tmp_path) as feedback:
        app = build_app(Engine(load_model(str(tiny_causal_lm))), feedback=feedback, access=access)
        with serving(app) as url:
            client = Client(url, verbose=False)
            outputs = [tweet(client) for _ in range(5)]

            def send(number: int, session: str, forwarded: str) -> str:
                headers = {"X-Forwarded-For": forwarded}
                with httpx.Client(headers=headers) as http:
                    return rate(url, *outputs[number], session=session, http=http)

            assert send(0, "s1", "10.0.0.1").startswith("Thanks!")
            assert send(1, "s1", "10.0.0.1").startswith("Thanks!")
            with pytest.raises(FeedbackRefused, match=r"from you \(the limit is 2/hour\)") as refused:
                send(2, "s1", "10.0.0.1")
            assert refused.value.status == 429
            assert send(2, "s2", "10.0.0.1").startswith("Thanks!")  # a refused call is not counted
            with pytest.raises(FeedbackRefused, match=r"from your IP address \(the limit is 3/hour\)"):
                send(3, "s3", "10.0.0.1")
            # One proxy hop: the entry it appended is the address; what the client wrote before it is not.
            with pytest.raises(FeedbackRefused, match="from your IP address"):
                send(3, "s3", "10.0.0.9, 10.0.0.1")
            assert send(3, "s3", "10.0.0.1, 10.0.0.2").startswith("Thanks!")
        assert len(records(tmp_path, "tweet")) == 4


def test_the_space_serves_the_route_even_with_ssr_asked_for(tiny_causal_lm: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from hub.space import SpaceConfig
    from spaces.app import create_app
    from tests.test_app import free_port

    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setenv("GRADIO_SSR_MODE", "true")  # SSR's Node front would hide the route from visitors
    space = create_app(SpaceConfig(model=str(tiny_causal_lm), poll_seconds=0))
    port = free_port()
    try:
        space.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        url = f"http://127.0.0.1:{port}/"
        text, served = tweet(Client(url, verbose=False))
        assert rate(url, text, served).startswith("Thanks!")
        assert records(space.feedback.folder, "tweet")[-1]["ratings"] == RATINGS
    finally:
        space.close()
