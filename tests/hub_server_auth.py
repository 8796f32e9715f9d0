"""Who may write, and what error bodies say, on the test Hub server (see ``tests/hub_server.py``).

Two deliberate differences from the real Hub make token-masking tests bite:

- every error answer to a request that carried a token quotes that token (body ``error`` and
  ``X-Error-Message``, so it reaches the first line of ``huggingface_hub``'s 403 messages);
- ``HubServer.read_only_tokens`` are refused (403) on every write, as a ``read``-role token is.
"""

from __future__ import annotations

from .hub_server_store import HubError

INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
"""``huggingface_hub`` tells a bad token from a missing repo by this exact ``X-Error-Message``."""


def unauthenticated() -> HubError:
    return HubError(401, INVALID_CREDENTIALS)


def check_can_write(token: str | None, read_only_tokens: set[str], target: str) -> None:
    """Raise the Hub's 401 (no token) or 403 (a read-only token) for a write to ``target``."""
    if token is None:
        raise unauthenticated()
    if token in read_only_tokens:
        raise HubError(403, f"You don't have the rights to write to {target}: this token has the read role")


def with_token(message: str, token: str | None) -> str:
    """``message`` quoting the request's token, as a careless server might."""
    return message if token is None else f"{message} (request token: {token})"


def error_answer(err: HubError, token: str | None) -> tuple[dict, dict[str, str]]:
    """The JSON body and headers of an error answer (the token quoted in both)."""
    message = with_token(err.message, token)
    headers = {"X-Error-Message": message, **err.headers}
    if err.code:
        headers["X-Error-Code"] = err.code
    return {**err.body, "error": message}, headers


def role(token: str | None, read_only_tokens: set[str]) -> str:
    """What ``whoami`` reports as the token's role."""
    return "read" if token in read_only_tokens else "write"
