"""Give the `(request, profile, *values)` event handlers real parameter names for the API and MCP.

Gradio names an endpoint's parameters after its function's signature (`*values` shows up as
`param_0`, `param_1`, ...) and describes an MCP tool from its docstring's `Args:` section.
`name_parameters` sets both on a handler, so one handler body serves every task's form.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import gradio as gr

from demos.settings import INFO
from tasks import Task
from tasks.generation import GENERATION_LIMITS, SettingLimit

Handler = TypeVar("Handler", bound=Callable[..., Any])


@dataclass(frozen=True)
class Parameter:
    """One named API parameter: its name, Python type, description and (if optional) default."""

    name: str
    kind: Any
    description: str
    default: Any = inspect.Parameter.empty


def field_parameters(task: Task) -> list[Parameter]:
    """The task's text boxes, in form order."""
    return [Parameter(field.name, str, f"{field.label}, at most {field.max_chars} characters"
                      + (f" (e.g. {field.placeholder})." if field.placeholder else "."))
            for field in task.fields]


def setting_parameters() -> list[Parameter]:
    """The generation settings, in the order of `demos.settings.SettingsPanel.components()`."""
    def described(name: str, limit: SettingLimit) -> Parameter:
        hint = f"; {INFO[name]}" if name in INFO else ""
        description = f"{limit.label}, {limit.span}{hint}."
        if limit.optional:
            return Parameter(name, limit.kind | None, description, default=None)
        return Parameter(name, limit.kind, description)

    return [described(name, limit) for name, limit in GENERATION_LIMITS.items()]


def name_parameters(handler: Handler, *, name: str, summary: str, parameters: list[Parameter],
                    mcp_tool: bool = True) -> Handler:
    """Rename `handler(request, profile, *values)`'s values to `parameters` for Gradio's API and MCP docs.

    Gradio reads the signature both to name API parameters and to pass the request and profile,
    which it still passes positionally, so the handler body keeps taking `*values`.
    `mcp_tool=False` keeps a public API endpoint out of the MCP tool list.
    """
    special = [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request),
               inspect.Parameter("profile", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                 annotation=gr.OAuthProfile | None)]
    named = [inspect.Parameter(p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=p.kind, default=p.default)
             for p in parameters]
    handler.__signature__ = inspect.Signature(special + named)
    handler.__annotations__ = {p.name: p.annotation for p in special + named}
    handler.__name__ = handler.__qualname__ = name
    handler.__doc__ = "\n".join([summary, "", "Args:", *(f"    {p.name}: {p.description}" for p in parameters)])
    if not mcp_tool:
        # Gradio has no per-event MCP switch: hiding an endpoint from the API docs
        # (api_visibility="undocumented") would also hide it from gradio_client's view_api.
        # Its MCP server lists an endpoint only when the function is untagged or tagged "tool".
        handler._mcp_type = "none"
    return handler
