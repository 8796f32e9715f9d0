"""Feedback from a click (or an HTTP call) to a stored record: what each tab's feedback takes, and the desk
that checks and stores it.

The Gradio `feedback_<slug>` events and the plain HTTP route (`demos.feedback_route`) both hand
`FeedbackDesk.give` the values by these parameter names, so the rules are the same on both paths:
an output first, a flag or an edit, texts no longer than `MAX_TEXT_CHARS`; then sign-in, quota,
the ticket (which must vouch for this output of these inputs, `hub.feedback.tickets`), single use,
and the store, which validates the record once (`hub.feedback.records.build_record`).

Feedback is bound to what was served: the record's model and settings come from the ticket,
never from the client; each ticket gives each kind of feedback once.

The desk is async and runs on the server's event loop: its checks are cheap and in memory, and
the one slow step, the fsync, runs on the store's own thread (`FeedbackStore.append`). A pool of
worker threads, one per request in flight, cost more than the work itself (measured in
`benchmarks/feedback.py`: threads contending for the GIL and handing every request across).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import gradio as gr

from demos.endpoints import Parameter, field_parameters
from demos.quotas import Visitor
from demos.refusals import refusal
from hub.arena import player_name
from hub.errors import FlywheelError
from hub.feedback.records import MAX_TEXT_CHARS
from hub.feedback.tickets import InvalidTicket, SpentTickets, Ticket, pseudonym, verify_ticket
from tasks import InvalidInput, Task, get_task

ARENA_VOTES = ("A", "B", "tie", "both bad")
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
               float: "a number", type(None): "null"}

OUTPUT = Parameter("output", str, "The output as generate returned it.")
SERVED_BY = Parameter("served_by", dict, "The served_by generate returned with the output (it holds its ticket).")


def feedback_parameters(task: Task) -> list[Parameter]:
    """The parameters of `feedback_<slug>`, in form order: the task's inputs, the output(s), the judgement,
    the served-by. The HTTP route takes the same names as JSON keys."""
    if task.slug == "arena":
        judgement = [Parameter("answer_a", str, "Answer A as received."),
                     Parameter("answer_b", str, "Answer B as received."),
                     Parameter("vote", str, f"One of {', '.join(ARENA_VOTES)}.")]
    elif task.rating_weights:
        judgement = [OUTPUT, *(Parameter(name, int, f"{name.capitalize()}, 1 to 5.") for name in task.rating_weights)]
    else:
        judgement = [OUTPUT, Parameter("flag", str | None, f"One of {', '.join(task.flags)}, or None."),
                     Parameter("corrected_output", str, "The output as it should have been, or ''.")]
    return [*field_parameters(task), *judgement, SERVED_BY]


def feedback_summary(task: Task) -> str:
    """One line describing `feedback_<slug>` (the API docs)."""
    if task.slug == "arena":
        return "Vote for the better arena answer."
    if task.rating_weights:
        return f"Rate a {task.title} output from 1 (poor) to 5 (excellent) on each quality."
    return f"Flag or correct a {task.title} output."


class FeedbackDesk:
    """Takes feedback on this app's outputs and stores what passes every check.

    Args:
        feedback: the store (`hub.feedback.callback.FeedbackCallback`); None switches feedback off.
        key: the key the outputs' tickets were signed with.
        admit: raises the refusal when a visitor is over the feedback quota.
        require_login: refuse feedback from people not signed in with Hugging Face.
        on_record: called with each stored record (the online learner's queue).
    """

    def __init__(self, *, feedback: Any | None, key: bytes, admit: Callable[[Visitor | None], None],
                 require_login: bool = False, on_record: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.feedback = feedback
        self.require_login = require_login
        self._key = key
        self._admit_visitor = admit
        self._on_record = on_record
        self._spent = SpentTickets()

    async def give(self, task: Task, values: Mapping[str, Any], visitor: Visitor) -> str:
        """Check and store one feedback on `task` given as `feedback_parameters(task)` names -> values
        (missing ones count as None); return the confirmation, or raise `demos.refusals.Refusal`."""
        inputs = [values.get(name) for name in task.field_names]
        served = values.get(SERVED_BY.name)
        if task.slug == "arena":
            a, b = _texts(values.get("answer_a"), values.get("answer_b"))
            if not (a.strip() and b.strip()):
                raise refusal("Generate both answers first, then vote.")
            return await self.record_vote(inputs, served, visitor, answers=(a, b), choice=values.get("vote"))
        (completion,) = _texts(values.get(OUTPUT.name))
        if task.rating_weights:
            if not completion.strip():
                raise refusal("Generate an output first, then rate it.")
            # The store checks each is a whole number from 1 to 5 and computes the reward from them.
            ratings = {name: values.get(name) for name in task.rating_weights}
            return await self.record(task.slug, inputs, served, visitor, kind="rating", completion=completion,
                                     ratings=ratings)
        if not completion.strip():
            raise refusal("Generate an output first, then give feedback on it.")
        label = values.get("flag")
        (edited,) = _texts(values.get("corrected_output"))
        is_edit = bool(edited.strip()) and edited.strip() != completion.strip()
        if not label and not is_edit:
            raise refusal("Choose a flag or write a corrected output.")
        messages = []
        if label:
            messages.append(await self.record(task.slug, inputs, served, visitor, kind="flag",
                                              completion=completion, label=label))
        if is_edit:  # the edit belongs to the output it corrects: same ticket
            messages.append(await self.record(task.slug, inputs, served, visitor, kind="edit",
                                              completion=completion, edited=edited.strip()))
        return " ".join(messages)

    async def record(self, slug: str, values: list[Any], served_by: Any, visitor: Visitor | None, *, kind: str,
                     **fields: Any) -> str:
        """Store one flag, rating or edit of the output `fields["completion"]`; return the confirmation.

        `served_by` is what `generate_<slug>` returned with that output. The store validates the
        record once (`hub.feedback.records.build_record`); its message becomes the `gr.Error`.
        """
        task, as_sent = self._admit_feedback(slug, values, visitor)
        ticket = self._verify(task, as_sent, served_by, fields.get("completion"), what="served-by")
        return await self._store(task, as_sent, visitor, [ticket], kind=kind, model=ticket.model,
                                 generation=ticket.generation, **fields)

    async def record_vote(self, values: list[Any], served_by: Any, visitor: Visitor | None, *,
                          answers: tuple[str, str], choice: str) -> str:
        """Store one arena vote on `answers` (A, B); `served_by` holds both sides' served-by."""
        task, as_sent = self._admit_feedback("arena", values, visitor)
        if choice not in ARENA_VOTES:
            raise refusal(f"Vote must be one of: {', '.join(ARENA_VOTES)}.")
        if not isinstance(served_by, dict):
            raise refusal(f"served-by must be the JSON object generate_arena returned, with sides A and B "
                          f"(got {_JSON_TYPES.get(type(served_by), 'another value')}).")
        tickets = {side: self._verify(task, as_sent, served_by.get(side), answer, what=f"served-by {side}")
                   for side, answer in zip("AB", answers, strict=True)}
        a, b = answers
        chosen, rejected, winner = (b, a, "B") if choice == "B" else (a, b, "A")
        thanks = await self._store(task, as_sent, visitor, list(tickets.values()), kind="preference",
                                   chosen=chosen, rejected=rejected, tie=choice in ("tie", "both bad"),
                                   label=choice.replace(" ", "-"), model=tickets[winner].model,
                                   generation=tickets[winner].generation,
                                   sides={side: ticket.model for side, ticket in tickets.items()})
        revealed = {side: player_name(ticket.model) or "an unknown model" for side, ticket in tickets.items()}
        return f"{thanks} Answer A came from {revealed['A']}, answer B from {revealed['B']}."

    def _admit_feedback(self, slug: str, values: list[Any], visitor: Visitor | None) -> tuple[Task, dict[str, Any]]:
        """(task, inputs as sent) once feedback is on, the visitor may send it and is within quota."""
        if self.feedback is None:
            raise refusal("Feedback is switched off for this app.", status=403)
        if self.require_login and not (visitor and visitor.username):
            raise refusal("Sign in with Hugging Face (the button at the top of the page) to send feedback.",
                          status=401)
        self._admit_visitor(visitor)
        task = get_task(slug)
        if len(values) != len(task.fields):
            raise refusal(f"{task.title} feedback takes {len(task.fields)} input(s): {', '.join(task.field_names)}.")
        return task, dict(zip(task.field_names, values, strict=True))

    def _verify(self, task: Task, inputs: dict[str, str], served_by: Any, completion: Any, *, what: str) -> Ticket:
        """The ticket in `served_by`, checked against the output text and the inputs sent back."""
        if not isinstance(served_by, dict):
            raise refusal(f"{what} must be the JSON object generate_{task.slug} returned with the output "
                          f"(got {_JSON_TYPES.get(type(served_by), 'another value')}).")
        if not isinstance(completion, str) or len(completion) > MAX_TEXT_CHARS:  # before hashing it
            raise refusal(f"The output must be the text generate_{task.slug} returned "
                          f"(at most {MAX_TEXT_CHARS} characters).")
        if sum(len(value) if isinstance(value, str) else 0 for value in inputs.values()) > MAX_TEXT_CHARS:
            raise refusal("The inputs are longer than any generate call accepts.")  # before hashing them
        try:
            ticket = verify_ticket(served_by.get("ticket"), key=self._key, task=task.slug, inputs=inputs,
                                   completion=completion)
        except InvalidTicket as error:
            raise refusal(str(error), status=403) from None
        for name, value in {**ticket.model, "generation": ticket.generation}.items():
            if name in served_by and served_by[name] != value:
                raise refusal(f"{what} was changed after it was served ({name}); send it back exactly as "
                              f"generate_{task.slug} returned it.", status=403)
        return ticket

    async def _store(self, task: Task, inputs: dict[str, Any], visitor: Visitor | None, tickets: list[Ticket], *,
                     kind: str, **fields: Any) -> str:
        visitor = visitor or Visitor()
        claimed: list[Ticket] = []
        try:
            for ticket in tickets:
                if not self._spent.claim(ticket, kind):
                    raise refusal(f"This output already has your {kind}; generate a new output to send more.",
                                  status=403)
                claimed.append(ticket)
            pending = self.feedback.append(  # the one validation of the record, inputs included
                task=task.slug, kind=kind, inputs=inputs,
                session=self.feedback.session_id(visitor.session), user=self._user_hash(visitor), **fields)
            record = await asyncio.wrap_future(pending)  # the fsync runs on the store's thread, not here
        except (InvalidInput, FlywheelError, gr.Error) as error:
            for ticket in claimed:  # nothing was stored: the person may try again
                self._spent.release(ticket, kind)
            if isinstance(error, gr.Error):
                raise
            raise refusal(str(error), status=400 if isinstance(error, InvalidInput) else 503) from None
        if self._on_record is not None:
            self._on_record(record)
        return f"Thanks! Saved your {kind} (record {record['id'][:8]})."

    def _user_hash(self, visitor: Visitor) -> str | None:
        """A keyed hash of the signed-in username (None when anonymous or identifiers are off)."""
        if not visitor.username or not getattr(self.feedback, "session_ids", True):
            return None
        return pseudonym(visitor.username, key=self._key)


def _texts(*values: Any) -> list[str]:
    """Outputs and edits as text (non-text counts as empty), refusing over-long ones before any
    per-character work."""
    texts = [value if isinstance(value, str) else "" for value in values]
    if any(len(text) > MAX_TEXT_CHARS for text in texts):
        raise refusal(f"An output or corrected output is longer than {MAX_TEXT_CHARS} characters.")
    return texts
