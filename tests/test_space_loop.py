"""The full loop on the test Hub: the running Space collects feedback, `trainers/sft.py --push`
publishes a new adapter revision from it, and the same running app answers with that revision."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from gradio_client import Client

from hub.space import SpaceConfig
from spaces.app import create_app
from tests.adapter_factory import adapter_files, make_adapter
from tests.test_app import free_port
from tests.test_space import FEEDBACK, GREEDY, TWEET, wait_for

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Advice for entrepreneurs", "Hiring your first engineer", "Why ship small", "Pricing tips"]


def test_feedback_trains_an_adapter_that_the_running_space_then_serves(
        tiny_causal_lm: Path, hub_server, tmp_path: Path) -> None:
    first = hub_server.seed(TWEET, adapter_files(make_adapter(tiny_causal_lm, tmp_path / "v1", seed=1)))
    space = create_app(SpaceConfig(model=str(tiny_causal_lm), adapters={"tweet": TWEET},
                                   feedback_repo=FEEDBACK, poll_seconds=0.3))
    base_weights = space.engine.model.get_base_model()
    port = free_port()
    space.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        # 1. People use the tweet tab and rate what the current adapter wrote.
        for prompt in PROMPTS:
            text, served = client.predict(prompt, *GREEDY, api_name="/generate_tweet")
            assert served["revision"] == first
            message = client.predict(prompt, text, 5, 5, 4, 5, served, api_name="/feedback_tweet")
            assert message.startswith("Thanks")
        assert space.feedback.push(timeout=60)
        rows = [json.loads(line) for path, data in hub_server.files(FEEDBACK, "dataset").items()
                if path.startswith("data/tweet/") for line in data.splitlines()]
        assert len(rows) == len(PROMPTS) and {r["model"]["revision"] for r in rows} == {first}

        # 2. A trainer turns that feedback into a new adapter revision on the Hub.
        result = subprocess.run(
            [sys.executable, "trainers/sft.py", "--task", "tweet", "--model", str(tiny_causal_lm),
             "--feedback-repo", FEEDBACK, "--max-steps", "2", "--per-device-train-batch-size", "2",
             "--min-rows", "1", "--eval-limit", "0", "--report-to", "none", "--output-dir",
             str(tmp_path / "sft"), "--push", "--force", "--hub-repo", TWEET],
            cwd=ROOT, env={**os.environ, **hub_server.env(tmp_path / "trainer-hf-home")},
            capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        second = hub_server.commits(TWEET)[-1].oid
        assert second != first and f"revision {second[:12]}" in result.stdout
        assert b"flywheel-tweet" in hub_server.read(TWEET, "README.md")  # the model card came along

        # 3. Without a restart, the running app picks it up and says so in every answer.
        wait_for(lambda: space.engine.adapters()["tweet"].revision == second)
        text, served = client.predict(PROMPTS[0], *GREEDY, api_name="/generate_tweet")
        assert served["adapter"] == TWEET and served["revision"] == second
        assert served["label"] == f"{TWEET}@{second[:12]}"
        assert space.engine.model.get_base_model() is base_weights  # the base model was never reloaded
        status = client.predict(api_name="/adapters")
        assert status["serving"]["tweet"].endswith(second[:12])
    finally:
        space.close()
