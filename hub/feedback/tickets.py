"""Signed tickets: proof that this server produced an output, so feedback can only judge real outputs.

Each generation returns, inside its served-by, a ticket: an HMAC-SHA256 signature over the
task, the inputs, the completion, the model/adapter/revision, the generation settings and an
expiry. Feedback is stored only with a valid, unexpired ticket whose task, inputs and
completion match, and its provenance (`model`, `generation`) is read from the ticket, never
from what the client says. The key is `FLYWHEEL_SECRET`, or a random key created once per
`FLYWHEEL_HOME` (file `secret`, mode 0600); it is never logged or shown.

A ticket is `<payload>.<signature>`, both base64url: the payload is readable JSON (the
served-by box shows the same facts), and changing any byte of it breaks the signature.
A sealed ticket (`sealed=True`, the blind arena's) encrypts its payload with AES-GCM under a key
derived from the same secret, so nobody can read which model answered before voting; its
payload starts with `~`.

Example:
    >>> key = b"an example key, at least 16 bytes"
    >>> served = {"base": "tiny", "adapter": "me/tweet-sft", "revision": "abc123"}
    >>> ticket = sign_ticket(key=key, task="tweet", inputs={"prompt": "Hiring"}, completion="Join us!",
    ...                      model=served, generation={"temperature": 0.7}, now=1000.0)
    >>> verify_ticket(ticket, key=key, task="tweet", inputs={"prompt": "Hiring"}, completion="Join us!",
    ...               now=1060.0).model["adapter"]
    'me/tweet-sft'
    >>> try:
    ...     verify_ticket(ticket, key=key, task="tweet", inputs={"prompt": "Hiring"}, completion="Join them!",
    ...                   now=1060.0)
    ... except InvalidTicket as error:
    ...     print(error)
    This output is not the one the server produced; feedback must judge the output as served.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hub.errors import FlywheelError
from hub.paths import flywheel_home
from tasks import InvalidInput

SECRET_ENV = "FLYWHEEL_SECRET"
SECRET_FILE = "secret"
"""File under `FLYWHEEL_HOME` holding the generated key when `FLYWHEEL_SECRET` is unset."""
MIN_SECRET_CHARS = 16
TICKET_TTL = 3600.0
"""Seconds a ticket stays valid: feedback on an older output asks the person to generate again."""
MAX_TICKET_CHARS = 4096
"""Longer strings are refused before any decoding."""
_VERSION = 1
_SEALED = "~"
"""First character of a sealed payload (never one of base64url's)."""


class InvalidTicket(InvalidInput):
    """A ticket that is missing, forged, expired or for another output; the message says which."""


@dataclass(frozen=True)
class Ticket:
    """What a valid ticket vouches for."""

    task: str
    model: dict[str, str | None]
    """Base model, adapter and revision that produced the output."""
    generation: dict[str, Any]
    """The settings it was sampled with."""
    expires: int
    """Unix time after which the ticket is refused."""
    nonce: str
    """Unique per ticket, so a ledger can refuse replays (`SpentTickets`)."""


def secret_key(*, environ: Mapping[str, str] | None = None, home: Path | None = None) -> bytes:
    """The server's signing key: `FLYWHEEL_SECRET`, else `<home>/secret`, created once with mode 0600.

    Raises `FlywheelError` for a `FLYWHEEL_SECRET` shorter than 16 characters or an unwritable home.
    """
    env = os.environ if environ is None else environ
    configured = env.get(SECRET_ENV)
    if configured:
        if len(configured) < MIN_SECRET_CHARS:
            raise FlywheelError(f"{SECRET_ENV} must be at least {MIN_SECRET_CHARS} characters long.")
        return configured.encode("utf-8")
    path = (home if home is not None else flywheel_home()) / SECRET_FILE
    try:
        if not path.exists():
            _create_secret(path)
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        key = path.read_bytes().strip()
    except OSError as error:
        raise FlywheelError(f"The signing key {path} could not be created or read: {error.strerror}.") from None
    if len(key) < MIN_SECRET_CHARS:
        raise FlywheelError(f"The signing key {path} is too short; delete it to create a new one.")
    return key


def _create_secret(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole, then linked into place: a concurrent reader never sees half a key, and
    # of two processes creating it at once, the second keeps the first one's key.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret.")  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def sign_ticket(*, key: bytes, task: str, inputs: Mapping[str, str], completion: str,
                model: Mapping[str, str | None], generation: Mapping[str, Any], ttl: float = TICKET_TTL,
                now: float | None = None, sealed: bool = False) -> str:
    """A ticket for one output; `inputs` as validated by the task (trimmed).

    `sealed=True` encrypts the payload, so the ticket hides `model` and `generation` from whoever
    holds it; `verify_ticket` reads both kinds.
    """
    payload = {"v": _VERSION, "task": task, "inputs": _digest(dict(inputs)), "completion": _digest(completion),
               "model": dict(model), "generation": dict(generation),
               "expires": int((time.time() if now is None else now) + ttl), "nonce": secrets.token_hex(8)}
    plain = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")
    body = _SEALED + _b64(_seal(key, plain)) if sealed else _b64(plain)
    return f"{body}.{_b64(_mac(key, body))}"


def verify_ticket(ticket: Any, *, key: bytes, task: str, inputs: Mapping[str, str], completion: str,
                  now: float | None = None) -> Ticket:
    """The facts a ticket vouches for, once its signature, expiry, task, inputs and completion check out.

    Raises `InvalidTicket` with a sentence meant for the person (or the API caller).
    """
    if not isinstance(ticket, str) or not ticket:
        raise InvalidTicket("Feedback needs the served-by of a generated output (it carries the output's "
                            "ticket): generate an output first.")
    forged = len(ticket) > MAX_TICKET_CHARS  # before any per-character work
    body, _, signature = ("", "", "") if forged else ticket.partition(".")
    if forged or not hmac.compare_digest(_b64(_mac(key, body)).encode(), _utf8(signature)):
        raise InvalidTicket("This output's ticket is not one this server issued (or it was altered).")
    try:
        payload = json.loads(_open(key, _unb64(body[len(_SEALED):])) if body.startswith(_SEALED) else _unb64(body))
        found = Ticket(task=payload["task"], model=payload["model"], generation=payload["generation"],
                       expires=int(payload["expires"]), nonce=str(payload["nonce"]))
    except (ValueError, KeyError, TypeError, binascii.Error, InvalidTag):  # signed by us: only an old format
        raise InvalidTicket("This output's ticket has an unknown format; generate again.") from None
    if (time.time() if now is None else now) > found.expires:
        raise InvalidTicket("This output's ticket has expired; generate again to give feedback.")
    if found.task != task or payload["inputs"] != _digest(dict(inputs)):
        raise InvalidTicket("This ticket belongs to another task or other inputs; send the inputs the "
                            "output was generated from.")
    if payload["completion"] != _digest(completion):
        raise InvalidTicket("This output is not the one the server produced; feedback must judge the "
                            "output as served.")
    return found


def pseudonym(name: str, *, key: bytes, purpose: str = "user") -> str:
    """A keyed hash of `name` (32 hex characters): stable for one key, meaningless without it.

    Example:
        >>> key = b"k" * 16
        >>> pseudonym("alice", key=key) == pseudonym("alice", key=key) != pseudonym("bob", key=key)
        True
    """
    return hmac.new(key, _utf8(f"{purpose}\0{name}"), hashlib.sha256).hexdigest()[:32]


class SpentTickets:
    """Which (ticket, kind) pairs already became a record, so a replayed ticket is refused until it expires.

    Example:
        >>> spent, ticket = SpentTickets(), Ticket("tweet", {}, {}, expires=2000, nonce="n1")
        >>> spent.claim(ticket, "rating", now=1000.0), spent.claim(ticket, "rating", now=1001.0)
        (True, False)
    """

    def __init__(self) -> None:
        self._spent: dict[tuple[str, str], int] = {}  # insertion order ~ expiry order (one TTL)
        self._lock = threading.Lock()

    def claim(self, ticket: Ticket, kind: str, *, now: float | None = None) -> bool:
        """True (and remembered) the first time; False if this ticket already gave this kind of feedback."""
        moment = time.time() if now is None else now
        with self._lock:
            while self._spent:
                oldest, expires = next(iter(self._spent.items()))
                if expires >= moment:
                    break
                del self._spent[oldest]
            if (ticket.nonce, kind) in self._spent:
                return False
            self._spent[ticket.nonce, kind] = ticket.expires
            return True

    def release(self, ticket: Ticket, kind: str) -> None:
        """Forget a claim whose record could not be stored, so the person can retry."""
        with self._lock:
            self._spent.pop((ticket.nonce, kind), None)


def _digest(value: Any) -> str:
    return hashlib.sha256(_utf8(json.dumps(value, sort_keys=True, ensure_ascii=False))).hexdigest()


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # a client may send lone surrogates


def _mac(key: bytes, body: str) -> bytes:
    return hmac.new(key, b"ticket\0" + _utf8(body), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sealing_key(key: bytes) -> AESGCM:
    return AESGCM(hmac.new(key, b"seal\0", hashlib.sha256).digest())  # not the signing key itself


def _seal(key: bytes, plain: bytes) -> bytes:
    nonce = secrets.token_bytes(12)
    return nonce + _sealing_key(key).encrypt(nonce, plain, b"ticket")


def _open(key: bytes, sealed: bytes) -> bytes:
    return _sealing_key(key).decrypt(sealed[:12], sealed[12:], b"ticket")
