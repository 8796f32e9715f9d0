"""The one exception type that reaches a person as a clear message instead of a traceback."""

from tasks.base import first_line


class FlywheelError(Exception):
    """A problem the user can fix (bad model id, missing files, wrong data).

    CLIs print `str(error)` on one line and exit with code 2; the UI shows it in `gr.Error`.
    """


__all__ = ["FlywheelError", "first_line"]
