"""Named API parameters for gradio_client, and the MCP server's tools (generate yes, feedback no)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

from demos.app import build_app
from hub.feedback.callback import FeedbackCallback
from serving.engine import Engine
from serving.models import load_model
from tasks import SLUGS
from tests.test_app import serving

SETTING_NAMES = ["temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens", "seed"]
README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(scope="module")
def served(tiny_causal_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Client]]:
    feedback = FeedbackCallback(folder=tmp_path_factory.mktemp("feedback"))
    with serving(build_app(Engine(load_model(str(tiny_causal_lm))), feedback=feedback), mcp_server=True) as url:
        yield url, Client(url, verbose=False)
    feedback.close(push=False)


def parameter_names(client: Client, endpoint: str) -> list[str]:
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    return [parameter["parameter_name"] for parameter in endpoints[endpoint]["parameters"]]


@pytest.mark.parametrize(("endpoint", "fields"), [("/generate_tweet", ["prompt"]),
                                                   ("/generate_conversation_starter", ["bio", "interests"])])
def test_generate_endpoints_name_their_parameters(served: tuple[str, Client], endpoint: str,
                                                   fields: list[str]) -> None:
    _, client = served
    assert parameter_names(client, endpoint) == fields + SETTING_NAMES


def test_feedback_endpoints_name_their_parameters(served: tuple[str, Client]) -> None:
    _, client = served
    assert parameter_names(client, "/feedback_tweet") == [
        "prompt", "output", "relevance", "clarity", "originality", "engagement", "served_by"]
    assert parameter_names(client, "/feedback_arena") == ["prompt", "answer_a", "answer_b", "vote", "served_by"]


def test_keyword_calls_leave_out_settings_and_reach_the_feedback_endpoint(served: tuple[str, Client]) -> None:
    _, client = served
    text, served_by = client.predict(bio="A nurse who bakes bread.", interests="sourdough, cycling", seed=3,
                                     max_new_tokens=8, api_name="/generate_conversation_starter")
    assert text.strip() and served_by["generation"]["seed"] == 3
    message = client.predict(bio="A nurse who bakes bread.", interests="sourdough, cycling", output=text,
                             flag="great", corrected_output="", served_by=served_by,
                             api_name="/feedback_conversation_starter")
    assert "thank" in message.lower()


def test_the_readme_example_runs_as_written(served: tuple[str, Client]) -> None:
    url, _ = served
    example = re.search(r"```python\n(from gradio_client import Client\n.*?)```", README.read_text(), re.S)
    assert example is not None
    code = example.group(1).replace('"http://127.0.0.1:7860/"', repr(url))
    scope: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own README
    assert scope["text"].strip() and "ticket" in scope["served_by"]


async def list_tools(url: str) -> dict[str, Any]:
    async with streamablehttp_client(f"{url}gradio_api/mcp/") as (read, write, _), \
            ClientSession(read, write) as session:
        await session.initialize()
        return {tool.name: tool for tool in (await session.list_tools()).tools}


def test_mcp_tools_hold_the_generate_endpoints_and_not_feedback(served: tuple[str, Client]) -> None:
    url, _ = served
    tools = asyncio.run(list_tools(url))
    # Read-only endpoints (the arena leaderboard) are tools too; what writes feedback is not.
    assert {f"generate_{slug}" for slug in SLUGS} <= set(tools)
    assert not [name for name in tools if "feedback" in name]
    assert all(tool.description for tool in tools.values())
    starter = tools["generate_conversation_starter"]
    assert "opening line" in starter.description
    properties = starter.inputSchema["properties"]
    assert list(properties) == ["bio", "interests", *SETTING_NAMES]
    assert "at most 1000 characters" in properties["bio"]["description"]
    assert "0 = greedy" in properties["temperature"]["description"]
