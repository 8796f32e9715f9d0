"""The seven Flywheel tasks as plain definitions (no model, no UI, no network)."""

from tasks.base import InputField, InvalidInput, Task, strip_control_characters
from tasks.catalog import TASKS

SLUGS: tuple[str, ...] = tuple(TASKS)


def get_task(slug: str) -> Task:
    """Return the task named `slug`, or raise `InvalidInput` listing the known slugs."""
    try:
        return TASKS[slug]
    except KeyError:
        raise InvalidInput(f"Unknown task {slug!r}; choose one of: {', '.join(SLUGS)}.") from None


__all__ = ["SLUGS", "TASKS", "InputField", "InvalidInput", "Task", "get_task", "strip_control_characters"]
