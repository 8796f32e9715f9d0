"""Quotas, visitors and the signing key: the parts of a public Space's defences that need no server."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest
from starlette.requests import Request

from demos.quotas import Limits, QuotaExceeded, Quotas, Rate, Visitor, visitor_from
from hub.errors import FlywheelError
from hub.feedback.tickets import SECRET_FILE, SpentTickets, Ticket, secret_key
from tasks import InvalidInput


def request(client: str, forwarded: str | None = None, session: str = "s1") -> gr.Request:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    return gr.Request(Request({"type": "http", "headers": headers, "client": (client, 5555)}), session_hash=session)


@pytest.mark.parametrize(("text", "rate"), [("5/minute", Rate(5, 60)), (" 120 / hours ", Rate(120, 3600)),
                                            ("1/day", Rate(1, 86400)), ("OFF", None)])
def test_rates_are_written_n_per_window(text: str, rate: Rate | None) -> None:
    assert Rate.parse(text) == rate


@pytest.mark.parametrize("text", ["5", "0/minute", "-1/hour", "5/fortnight", "lots/hour", ""])
def test_bad_rates_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput, match="N/second, N/minute, N/hour or N/day"):
        Rate.parse(text)


def test_limits_override_defaults_by_name() -> None:
    limits = Limits.parse(["generation=10/minute", "feedback-per-ip=off,feedback=3/day"])
    assert limits.rates == {"generation": Rate(10, 60), "generation-per-ip": Rate(360, 3600),
                            "feedback": Rate(3, 86400), "feedback-per-ip": None}
    with pytest.raises(InvalidInput, match="NAME one of generation, generation-per-ip"):
        Limits.parse("generations=10/minute")
    assert set(Limits.off().rates.values()) == {None}


def test_the_call_over_a_limit_is_refused_and_not_counted() -> None:
    quotas = Quotas(Limits.parse("generation=2/minute,generation-per-ip=3/minute"))
    alice, bob = Visitor(session="a", ip="10.0.0.1"), Visitor(session="b", ip="10.0.0.1")
    quotas.check("generation", alice, now=0)
    quotas.check("generation", alice, now=10)
    with pytest.raises(QuotaExceeded, match=r"from you \(the limit is 2/minute\); try again in 50 seconds"):
        quotas.check("generation", alice, now=10)
    quotas.check("generation", bob, now=20)  # alice's refused call did not use up the address's third call
    with pytest.raises(QuotaExceeded, match="from your IP address"):
        quotas.check("generation", bob, now=30)
    quotas.check("feedback", alice, now=30)  # actions are counted apart
    quotas.check("generation", alice, now=60.5)  # the window slid past her first call


def test_a_signed_in_person_is_counted_across_sessions() -> None:
    quotas = Quotas(Limits.parse("feedback=1/hour,feedback-per-ip=off"))
    quotas.check("feedback", Visitor(username="ada", session="tab-1"), now=0)
    with pytest.raises(QuotaExceeded, match="feedback requests from you"):
        quotas.check("feedback", Visitor(username="ada", session="tab-2"), now=1)


def test_tracked_keys_are_bounded() -> None:
    quotas = Quotas(Limits.parse("generation=1/minute,generation-per-ip=off"), max_keys=3)
    for number in range(10):
        quotas.check("generation", Visitor(session=f"s{number}"), now=float(number))
    assert len(quotas._calls["generation"]) <= 3


@pytest.mark.parametrize(("hops", "forwarded", "ip"), [
    (0, "203.0.113.9", "10.1.1.1"),  # no proxy trusted: the socket's peer
    (1, "6.6.6.6, 203.0.113.9", "203.0.113.9"),  # a client-written 6.6.6.6 is ignored
    (2, "203.0.113.9, 10.2.2.2", "203.0.113.9"),
    (3, "203.0.113.9", "203.0.113.9"),  # fewer entries than hops: the leftmost
    (1, None, "10.1.1.1"),
])
def test_the_client_address_comes_from_trusted_proxies_only(hops: int, forwarded: str | None, ip: str) -> None:
    visitor = visitor_from(request("10.1.1.1", forwarded), None, proxy_hops=hops)
    assert (visitor.ip, visitor.session, visitor.person) == (ip, "s1", "session:s1")
    assert visitor_from(request("10.1.1.1"), "ada").person == "user:ada"


def test_the_signing_key_is_made_once_per_home_with_mode_0600(tmp_path: Path) -> None:
    key = secret_key(environ={}, home=tmp_path)
    assert secret_key(environ={}, home=tmp_path) == key and len(key) >= 32
    assert (tmp_path / SECRET_FILE).stat().st_mode & 0o777 == 0o600
    assert secret_key(environ={"FLYWHEEL_SECRET": "x" * 20}, home=tmp_path) == b"x" * 20
    with pytest.raises(FlywheelError, match="at least 16 characters"):
        secret_key(environ={"FLYWHEEL_SECRET": "short"}, home=tmp_path)


def test_a_spent_ticket_is_forgotten_once_it_expires_or_its_record_failed() -> None:
    spent, ticket = SpentTickets(), Ticket("tweet", {}, {}, expires=100, nonce="n")
    assert spent.claim(ticket, "flag", now=0) and spent.claim(ticket, "edit", now=0)
    assert not spent.claim(ticket, "flag", now=50)
    spent.release(ticket, "flag")
    assert spent.claim(ticket, "flag", now=60)
    assert spent.claim(Ticket("tweet", {}, {}, expires=300, nonce="m"), "flag", now=200)
    assert len(spent._spent) == 1  # the expired ones were dropped


def test_space_variables_set_quotas_sign_in_proxies_and_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    from hub.space import SpaceConfig
    from spaces.app import space_access

    config = SpaceConfig.from_env({"SPACE_ID": "u/s", "FLYWHEEL_LIMITS": "generation=5/minute",
                                   "FLYWHEEL_QUEUE_SIZE": "16", "FLYWHEEL_REQUIRE_LOGIN": "false"})
    assert SpaceConfig.from_env(config.to_variables()) == config
    monkeypatch.setenv("SPACE_ID", "u/s")
    monkeypatch.delenv("OAUTH_CLIENT_ID", raising=False)
    access = space_access(config)
    assert (access.limits.rates["generation"], access.queue_size, access.proxy_hops) == (Rate(5, 60), 16, 1)
    assert not access.login and not access.require_login
    with pytest.raises(FlywheelError, match="FLYWHEEL_LIMITS: A limit is written"):
        space_access(SpaceConfig(limits="generation=lots"))
    with pytest.raises(FlywheelError, match="FLYWHEEL_REQUIRE_LOGIN must be true or false"):
        SpaceConfig.from_env({"FLYWHEEL_REQUIRE_LOGIN": "maybe"})
    monkeypatch.setenv("SYSTEM", "spaces")  # a Space whose README lacks `hf_oauth: true`
    with pytest.raises(FlywheelError, match="hf_oauth: true"):
        space_access(SpaceConfig.from_env({"FLYWHEEL_REQUIRE_LOGIN": "true"}))
    monkeypatch.setenv("OAUTH_CLIENT_ID", "set-by-the-space")
    assert space_access(SpaceConfig(require_login=True)).login
