"""No loss on restart, through the real app: SIGTERM pushes every acknowledged row, and the Space's
status panel shows where feedback is kept and how its Hub sync is doing (a 403, token masked)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gradio_client import Client

import hub.paths
from hub.space import SpaceConfig
from spaces.app import create_app
from tests.hub_server import HubServer
from tests.test_app import SETTINGS, free_port
from tests.test_feedback_sync import REPO, hub_ids, wait_for

ROOT = Path(__file__).resolve().parents[1]
RATINGS = [5, 4, 3, 2]


def connect(process: subprocess.Popen, port: int, log: Path) -> Client:
    deadline = time.monotonic() + 180
    while True:
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the app did not start"
        try:
            return Client(f"http://127.0.0.1:{port}/", verbose=False)
        except Exception:  # noqa: BLE001 - not listening yet
            time.sleep(0.5)


def test_sigterm_to_python_m_demos_pushes_every_acknowledged_row(hub_server: HubServer, tiny_causal_lm: Path,
                                                                   tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "app.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "demos", "--model", str(tiny_causal_lm), "--feedback-repo", REPO,
             "--feedback-every", "60", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=output, stderr=subprocess.STDOUT)
    try:
        client = connect(process, port, log)
        # The sync's first push (the card) is done; the next scheduled one is an hour away.
        wait_for(lambda: hub_server.exists(REPO, "dataset") and "README.md" in hub_server.files(REPO, "dataset"))
        acknowledged = {}
        for number in range(12):
            prompt = f"Advice for founders, take {number}"
            text, served = client.predict(prompt, *SETTINGS, api_name="/generate_tweet")
            message = client.predict(prompt, text, *RATINGS, served, api_name="/feedback_tweet")
            acknowledged[re.search(r"record ([0-9a-f]{8})", message)[1]] = prompt
        assert hub_ids(hub_server) == []
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    rows = [json.loads(line) for path, data in hub_server.files(REPO, "dataset").items()
            if path.startswith("data/tweet/") for line in data.splitlines()]
    assert {row["id"][:8]: row["inputs"]["prompt"] for row in rows} == acknowledged


@pytest.mark.parametrize("storage", [False, True], ids=["no-persistent-storage", "persistent-storage"])
def test_the_space_status_panel_shows_storage_and_a_refused_sync(
        hub_server: HubServer, tiny_causal_lm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        storage: bool) -> None:
    reader = "readonly-space-token-7"  # the Space's HF_TOKEN secret, with the read role only
    hub_server.read_only_tokens.add(reader)
    monkeypatch.setenv("HF_TOKEN", reader)
    monkeypatch.setenv("SPACE_ID", "user/flywheel")
    monkeypatch.delenv("FLYWHEEL_HOME")
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    if storage:
        data.mkdir()
    monkeypatch.setattr(hub.paths, "PERSISTENT_STORAGE", data)
    space = create_app(SpaceConfig(model=str(tiny_causal_lm), feedback_repo=REPO, poll_seconds=0))
    port = free_port()
    space.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        text, served = client.predict("Advice for founders", *SETTINGS, api_name="/generate_tweet")
        client.predict("Advice for founders", text, *RATINGS, served, api_name="/feedback_tweet")
        assert space.feedback.push(timeout=30) is False
        status = client.predict(api_name="/adapters")
    finally:
        space.close()
    home = data / "flywheel" if storage else tmp_path / ".flywheel"
    feedback = status["feedback"]
    assert feedback["folder"] == str(home / "feedback") and feedback["repo"] == REPO
    assert feedback["sync"]["rows_waiting"] == 1 and feedback["sync"]["last_push"] is None
    assert "403 Forbidden" in feedback["sync"]["last_error"] and reader not in json.dumps(status)
    if storage:
        assert status["storage_warning"] is None
    else:
        assert status["storage_warning"].startswith(f"This Space has no persistent storage ({data})")
