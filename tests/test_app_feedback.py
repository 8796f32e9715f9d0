"""Feedback controls on every tab, driven through the `feedback_<slug>` endpoints."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client

from demos.app import build_app
from demos.feedback_client import FeedbackRefused, send_feedback
from demos.quotas import Access, Limits
from hub.feedback.callback import FeedbackCallback
from hub.feedback.records import validate_record
from hub.feedback.tickets import SECRET_ENV, TICKET_TTL, pseudonym, sign_ticket
from serving.engine import Engine
from serving.models import load_model
from tasks import TASKS
from tests.test_app import SETTINGS, example_args, serving
from tests.test_app_arena import opened

SECRET = "a test secret that is long enough"
KEY = SECRET.encode()


@pytest.fixture(scope="module")
def feedback_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("feedback")


@pytest.fixture(scope="module")
def client(tiny_causal_lm: Path, feedback_folder: Path) -> Iterator[Client]:
    feedback = FeedbackCallback(folder=feedback_folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SECRET_ENV, SECRET)
        app = build_app(Engine(load_model(str(tiny_causal_lm))), feedback=feedback)
    with serving(app) as url:
        yield Client(url, verbose=False)
    feedback.close(push=False)


def records(folder: Path, slug: str) -> list[dict]:
    rows = []
    for file in sorted((folder / "data" / slug).rglob("*.jsonl")):
        rows += [json.loads(line) for line in file.read_text().splitlines()]
    return rows


@pytest.mark.parametrize("slug", [s for s, t in TASKS.items() if t.flags])
def test_flag_and_edit_become_records(client: Client, feedback_folder: Path, slug: str) -> None:
    args = example_args(slug)
    text, served = client.predict(*args, *SETTINGS, api_name=f"/generate_{slug}")[:2]
    label = TASKS[slug].flags[0]
    message = client.predict(*args, text, label, "A better answer, written by a person.", served,
                             api_name=f"/feedback_{slug}")
    assert message.startswith("Thanks!") and message.count("record") == 2
    flag, edit = records(feedback_folder, slug)[-2:]
    assert (flag["kind"], flag["label"], flag["completion"]) == ("flag", label, text)
    assert (edit["kind"], edit["edited"]) == ("edit", "A better answer, written by a person.")
    assert flag["prompt"] == TASKS[slug].messages(TASKS[slug].validate(dict(zip(TASKS[slug].field_names, args,
                                                                                 strict=True))))
    assert flag["model"]["base"] == served["base"] and flag["generation"]["seed"] == SETTINGS[5]
    assert flag["session"] and len(flag["session"]) >= 16


def test_feedback_needs_a_flag_or_an_edit(client: Client) -> None:
    with pytest.raises(Exception, match="Choose a flag"):
        client.predict("Continue me", "some output", None, "", None, api_name="/feedback_detox")
    with pytest.raises(Exception, match="Generate an output first"):
        client.predict("Continue me", "", "toxic", "", None, api_name="/feedback_detox")


def test_unknown_flag_is_refused_and_nothing_written(client: Client, feedback_folder: Path) -> None:
    before = len(records(feedback_folder, "detox"))
    with pytest.raises(Exception, match="'hilarious' .* is not in the list of choices"):
        client.predict("Continue me", "some output", "hilarious", "", None, api_name="/feedback_detox")
    assert len(records(feedback_folder, "detox")) == before


def test_tweet_ratings_store_the_weighted_reward(client: Client, feedback_folder: Path) -> None:
    text, served = client.predict("Advice for founders", *SETTINGS, api_name="/generate_tweet")
    message = client.predict("Advice for founders", text, 5, 4, 3, 2, served, api_name="/feedback_tweet")
    assert message.startswith("Thanks!")
    row = records(feedback_folder, "tweet")[-1]
    assert row["ratings"] == {"relevance": 5, "clarity": 4, "originality": 3, "engagement": 2}
    assert row["reward"] == pytest.approx(TASKS["tweet"].reward_from_ratings(row["ratings"]))


@pytest.mark.parametrize("vote", ["A", "B", "tie", "both bad"])
def test_arena_votes_become_preferences(client: Client, feedback_folder: Path, vote: str) -> None:
    prompt = "Two tips for a marathon"
    answer_a, answer_b, served = client.predict(prompt, *SETTINGS, api_name="/generate_arena")
    assert client.predict("Two tips for a marathon", answer_a, answer_b, vote, served,
                          api_name="/feedback_arena").startswith("Thanks!")
    row = records(feedback_folder, "arena")[-1]
    assert row["kind"] == "preference" and row["label"] == vote.replace(" ", "-")
    assert row["tie"] is (vote in ("tie", "both bad"))
    if vote == "B":
        assert (row["chosen"], row["rejected"]) == (answer_b, answer_a)
    if vote == "A":
        assert (row["chosen"], row["rejected"]) == (answer_a, answer_b)
    models = opened(served, (answer_a, answer_b), prompt=prompt, key=SECRET.encode())
    model_of = {side: {key: models[side][key] for key in ("base", "adapter", "revision")} for side in "AB"}
    assert row["sides"] == model_of and row["model"] == model_of["B" if vote == "B" else "A"]
    assert (row["schema"], row["source"], row["user"]) == (2, "person", None)
    assert validate_record(row) == row


PROMPT = "Advice for founders"


def tweet(client: Client) -> tuple[str, dict]:
    text, served = client.predict(PROMPT, *SETTINGS, api_name="/generate_tweet")
    return text, served


RATINGS = {"relevance": 5, "clarity": 4, "originality": 3, "engagement": 2}


def rate(client: Client, text: str, served: object) -> str:
    return client.predict(PROMPT, text, *RATINGS.values(), served, api_name="/feedback_tweet")


def forged(ticket: str, **model: str) -> str:
    """`ticket` with its readable payload edited and the old signature kept: what a forger can do."""
    body, signature = ticket.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["model"].update(model)
    text = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(text).rstrip(b"=").decode() + "." + signature


def expired(served: dict, text: str) -> dict:
    """A correctly signed ticket for this very output, issued long enough ago to have expired."""
    ticket = sign_ticket(key=KEY, task="tweet", inputs={"prompt": PROMPT}, completion=text,
                         model={key: served[key] for key in ("base", "adapter", "revision")},
                         generation=served["generation"], now=time.time() - TICKET_TTL - 60)
    return {**served, "ticket": ticket}


FORGERIES = {
    "adapter changed in the ticket": (lambda s, t: ({**s, "ticket": forged(s["ticket"], adapter="evil")}, t),
                                      "not one this server issued"),
    "revision changed in the ticket": (lambda s, t: ({**s, "ticket": forged(s["ticket"], revision="0" * 40)}, t),
                                       "not one this server issued"),
    "made-up ticket": (lambda s, t: ({**s, "ticket": "e30.c2lnbmF0dXJl"}, t), "not one this server issued"),
    "huge ticket": (lambda s, t: ({**s, "ticket": "x" * 100_000}, t), "not one this server issued"),
    "adapter changed beside the ticket": (lambda s, t: ({**s, "adapter": "evil"}, t), "changed after it was served"),
    "settings changed beside the ticket": (lambda s, t: ({**s, "generation": {**s["generation"], "seed": 7}}, t),
                                           "changed after it was served"),
    "completion changed": (lambda s, t: (s, t + " and more"), "not the one the server produced"),
    "no ticket": (lambda s, t: ({k: v for k, v in s.items() if k != "ticket"}, t), "generate an output first"),
    "expired ticket": (lambda s, t: (expired(s, t), t), "has expired"),
    "served-by a string": (lambda s, t: ("served", t), r"served-by must be the JSON object .*\(got a string\)"),
    "served-by an array": (lambda s, t: ([s], t), r"\(got an array\)"),
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_feedback_on_an_output_the_server_did_not_serve_is_refused(client: Client, feedback_folder: Path,
                                                                    forgery: str) -> None:
    change, message = FORGERIES[forgery]
    text, served = tweet(client)
    before = len(records(feedback_folder, "tweet"))
    bad_served, bad_text = change(served, text)
    with pytest.raises(Exception, match=message):
        rate(client, bad_text, bad_served)
    assert len(records(feedback_folder, "tweet")) == before
    assert rate(client, text, served).startswith("Thanks!")  # the untouched served-by still works


def test_a_ticket_gives_each_kind_of_feedback_once_and_only_for_its_inputs(client: Client) -> None:
    text, served = tweet(client)
    with pytest.raises(Exception, match="another task or other inputs"):
        client.predict("Advice for investors", text, 5, 4, 3, 2, served, api_name="/feedback_tweet")
    assert rate(client, text, served).startswith("Thanks!")
    with pytest.raises(Exception, match="already has your rating"):
        rate(client, text, served)

    args = example_args("detox")
    text, served, _ = client.predict(*args, *SETTINGS, api_name="/generate_detox")
    with pytest.raises(Exception, match="not the one the server produced"):  # an edit belongs to a real output
        client.predict(*args, "An output nobody served.", None, "A better one.", served, api_name="/feedback_detox")


def test_arena_votes_need_both_sides_tickets(client: Client, feedback_folder: Path) -> None:
    prompt = "Two tips for a marathon"
    answer_a, answer_b, served = client.predict(prompt, *SETTINGS, api_name="/generate_arena")
    before = len(records(feedback_folder, "arena"))
    for bad, message in [({"A": served["A"], "B": served["A"]}, "not the one the server produced"),
                         ({"A": served["A"]}, r"served-by B must be the JSON object .*\(got null\)"),
                         ("AB", r"sides A and B \(got a string\)")]:
        with pytest.raises(Exception, match=message):
            client.predict(prompt, answer_a, answer_b, "A", bad, api_name="/feedback_arena")
    assert len(records(feedback_folder, "arena")) == before


def test_feedback_quotas_refuse_the_call_after_the_limit(tiny_causal_lm: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    access = Access(limits=Limits.parse("feedback=2/hour,feedback-per-ip=off"))
    with FeedbackCallback(folder=tmp_path) as feedback:
        app = build_app(Engine(load_model(str(tiny_causal_lm))), feedback=feedback, access=access)
        with serving(app) as url:
            client = Client(url, verbose=False)
            outputs = [tweet(client) for _ in range(3)]
            for text, served in outputs[:2]:
                assert rate(client, text, served).startswith("Thanks!")
            with pytest.raises(Exception, match=r"Too many feedback requests from you \(the limit is 2/hour\)"):
                rate(client, *outputs[2])
        assert len(records(tmp_path, "tweet")) == 2


def test_a_login_required_app_refuses_anonymous_feedback_and_hashes_signed_in_names_on_both_paths(
        tiny_causal_lm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    from tests.hub_server import HubServer

    monkeypatch.setenv(SECRET_ENV, SECRET)
    # Off a Space, Gradio signs people in as this machine's Hub account: here the local Hub's user.
    with HubServer(user="ada-lovelace") as hub, FeedbackCallback(folder=tmp_path / "feedback") as feedback:
        hub.patch_client(monkeypatch, tmp_path / "hf-home")
        app = build_app(Engine(load_model(str(tiny_causal_lm))), feedback=feedback,
                        access=Access(require_login=True))
        with serving(app) as url:
            anonymous = Client(url, verbose=False)
            text, served = tweet(anonymous)
            with pytest.raises(Exception, match="Sign in with Hugging Face"):
                rate(anonymous, text, served)
            with pytest.raises(FeedbackRefused, match="Sign in with Hugging Face") as refused:  # the HTTP route
                send_feedback(url, "tweet", inputs={"prompt": PROMPT}, output=text, served_by=served, ratings=RATINGS)
            assert refused.value.status == 401
            assert records(tmp_path / "feedback", "tweet") == []

            with httpx.Client(base_url=url) as browser:
                callback = browser.get("/login/huggingface").headers["location"]
                cookie = browser.get(callback).headers["set-cookie"].split(";")[0]
            signed_in = Client(url, verbose=False, headers={"Cookie": cookie})
            text, served = tweet(signed_in)
            assert rate(signed_in, text, served).startswith("Thanks!")
            text, served = tweet(signed_in)
            with httpx.Client(headers={"Cookie": cookie}) as browser:
                assert send_feedback(url, "tweet", inputs={"prompt": PROMPT}, output=text, served_by=served,
                                     ratings=RATINGS, http=browser).startswith("Thanks!")
    rows = records(tmp_path / "feedback", "tweet")
    assert len(rows) == 2 and rows[0]["user"] == rows[1]["user"]
    row = records(tmp_path / "feedback", "tweet")[-1]
    assert row["user"] == pseudonym("ada-lovelace", key=KEY) and "ada-lovelace" not in json.dumps(row)
