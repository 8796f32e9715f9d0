"""What each tab's feedback takes, by name, and the one function that checks and stores it.

The Gradio `feedback_<slug>` events and the plain HTTP route (`demos.feedback_route`) both
hand `give_feedback` the values by these parameter names, so the rules (an output first, a
flag or an edit, texts no longer than `MAX_TEXT_CHARS`, then `Suite.record`'s login, quota,
ticket and store checks) are the same on both paths.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from demos.endpoints import Parameter, field_parameters
from demos.handlers import ARENA_VOTES, Suite, refusal
from demos.quotas import Visitor
from hub.feedback.records import MAX_TEXT_CHARS
from tasks import Task

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


def give_feedback(suite: Suite, task: Task, values: Mapping[str, Any], visitor: Visitor) -> str:
    """Check and store one feedback on `task` given as `feedback_parameters(task)` names -> values
    (missing ones count as None); return the confirmation, or raise `demos.handlers.Refusal`."""
    inputs = [values.get(name) for name in task.field_names]
    served = values.get(SERVED_BY.name)
    if task.slug == "arena":
        a, b = _texts(values.get("answer_a"), values.get("answer_b"))
        if not (a.strip() and b.strip()):
            raise refusal("Generate both answers first, then vote.")
        return suite.record_vote(inputs, served, visitor, answers=(a, b), choice=values.get("vote"))
    (completion,) = _texts(values.get(OUTPUT.name))
    if task.rating_weights:
        if not completion.strip():
            raise refusal("Generate an output first, then rate it.")
        # The store checks each is a whole number from 1 to 5 and computes the reward from them.
        ratings = {name: values.get(name) for name in task.rating_weights}
        return suite.record(task.slug, inputs, served, visitor, kind="rating", completion=completion,
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
        messages.append(suite.record(task.slug, inputs, served, visitor, kind="flag", completion=completion,
                                     label=label))
    if is_edit:  # the edit belongs to the output it corrects: same ticket
        messages.append(suite.record(task.slug, inputs, served, visitor, kind="edit", completion=completion,
                                     edited=edited.strip()))
    return " ".join(messages)


def _texts(*values: Any) -> list[str]:
    """Outputs and edits as text (non-text counts as empty), refusing over-long ones before any
    per-character work."""
    texts = [value if isinstance(value, str) else "" for value in values]
    if any(len(text) > MAX_TEXT_CHARS for text in texts):
        raise refusal(f"An output or corrected output is longer than {MAX_TEXT_CHARS} characters.")
    return texts
