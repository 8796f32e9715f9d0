"""The real ``huggingface_hub``/``datasets`` clients against the local test Hub (no mocks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import CommitScheduler, HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

from tests.hub_server import HubServer
from tests.hub_server_faults import COMMITS

README = """---
configs:
- config_name: tweet
  data_files:
  - split: train
    path: data/tweet/**/*.jsonl
- config_name: arena
  data_files:
  - split: train
    path: data/arena/**/*.jsonl
---
# Feedback
"""


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def _feedback_files() -> dict[str, str]:
    tweet = [{"task": "tweet", "completion": f"tweet {i}", "reward": i / 10} for i in range(3)]
    arena = [{"task": "arena", "chosen": "a", "rejected": "b", "tie": False}]
    return {
        "README.md": README,
        "data/tweet/2026-11-22/w1.jsonl": "".join(json.dumps(r) + "\n" for r in tweet),
        "data/arena/2026-11-22/w1.jsonl": "".join(json.dumps(r) + "\n" for r in arena),
    }


def test_upload_download_round_trip(hub_server: HubServer, tmp_path: Path) -> None:
    assert os.environ["HF_ENDPOINT"] == hub_server.endpoint == hub_server.url
    api = HfApi()
    assert api.whoami()["name"] == "user"
    url = api.create_repo("adapters", exist_ok=True)
    assert url.repo_id == "user/adapters"
    api.create_repo("user/adapters", exist_ok=True)  # 409 swallowed by the client

    api.upload_file(path_or_fileobj=b'{"r": 8}', path_in_repo="config.json", repo_id="user/adapters")
    first = api.model_info("user/adapters").sha
    folder = tmp_path / "adapter"
    (folder / "nested").mkdir(parents=True)
    weights = os.urandom(300_000)  # binary and large-ish: still "regular", never LFS/Xet
    (folder / "adapter_model.safetensors").write_bytes(weights)
    (folder / "nested" / "notes.txt").write_text("hello")
    (folder / "config.json").write_text('{"r": 16}')
    api.upload_folder(folder_path=folder, repo_id="user/adapters", commit_message="adapter v2")

    assert hub_server.commit_count("user/adapters") == 2
    assert hub_server.read("user/adapters", "adapter_model.safetensors") == weights
    assert sorted(api.list_repo_files("user/adapters")) == [
        ".gitattributes",
        "adapter_model.safetensors",
        "config.json",
        "nested/notes.txt",
    ]
    top = {entry.path for entry in api.list_repo_tree("user/adapters")}
    assert top == {".gitattributes", "adapter_model.safetensors", "config.json", "nested"}
    info = api.model_info("user/adapters", files_metadata=True)
    assert {s.rfilename: s.size for s in info.siblings}["adapter_model.safetensors"] == len(weights)
    assert [c.title for c in api.list_repo_commits("user/adapters")][:2] == [
        "adapter v2",
        "Upload config.json with huggingface_hub",
    ]
    assert api.list_repo_refs("user/adapters").branches[0].target_commit == info.sha

    path = hf_hub_download("user/adapters", "config.json")
    assert Path(path).read_text() == '{"r": 16}'
    old = hf_hub_download("user/adapters", "config.json", revision=first, cache_dir=tmp_path / "c2")
    assert Path(old).read_text() == '{"r": 8}'
    snapshot = Path(snapshot_download("user/adapters", local_dir=tmp_path / "snap"))
    assert (snapshot / "adapter_model.safetensors").read_bytes() == weights
    assert (snapshot / "nested" / "notes.txt").read_text() == "hello"
    with pytest.raises(EntryNotFoundError, match="Entry Not Found"):
        hf_hub_download("user/adapters", "missing.txt")

    # Unchanged content makes no commit (preupload reports the remote oid).
    api.upload_file(path_or_fileobj=b"hello", path_in_repo="nested/notes.txt", repo_id="user/adapters")
    assert hub_server.commit_count("user/adapters") == 2
    api.delete_file("nested/notes.txt", repo_id="user/adapters")
    assert "nested/notes.txt" not in hub_server.files("user/adapters")
    assert hub_server.read("user/adapters", "nested/notes.txt", revision=info.sha) == b"hello"

    api.create_branch("user/adapters", branch="dev")
    api.upload_file(path_or_fileobj=b"x", path_in_repo="dev.txt", repo_id="user/adapters", revision="dev")
    assert "dev.txt" in hub_server.files("user/adapters", revision="dev")
    assert "dev.txt" not in hub_server.files("user/adapters")

    api.delete_repo("user/adapters")
    assert not api.repo_exists("user/adapters")


def test_private_repo_and_required_token(hub_server: HubServer) -> None:
    HfApi().create_repo("user/secret", repo_type="dataset", private=True)
    assert HfApi().dataset_info("user/secret").private
    with pytest.raises(RepositoryNotFoundError, match="Repository Not Found"):
        HfApi(token=False).dataset_info("user/secret")

    with HubServer(require_token=True) as strict:
        with pytest.raises(HfHubHTTPError, match="401") as err:
            HfApi(endpoint=strict.url, token=False).model_info("user/anything")
        assert err.value.response.status_code == 401
        assert HfApi(endpoint=strict.url, token="anything").whoami()["name"] == "user"
        assert strict.requests[-1].token == "anything"


def test_commit_scheduler_pushes_folder(hub_server: HubServer, tmp_path: Path) -> None:
    folder = tmp_path / "feedback"
    scheduler = CommitScheduler(repo_id="user/feedback", repo_type="dataset", folder_path=folder, every=0.01)
    try:
        (folder / "data").mkdir(parents=True, exist_ok=True)
        (folder / "data" / "w1.jsonl").write_text('{"label": "great"}\n')

        def pushed() -> bool:
            return "data/w1.jsonl" in hub_server.files("user/feedback", "dataset")

        _wait_for(pushed)
        with (folder / "data" / "w1.jsonl").open("a") as f:
            f.write('{"label": "generic"}\n')
        scheduler.trigger().result()  # deterministic push, no waiting for the interval
        assert hub_server.read("user/feedback", "data/w1.jsonl", "dataset").count(b"\n") == 2
        assert all(c.title == "Scheduled Commit" for c in hub_server.commits("user/feedback", "dataset")[1:])
        HfApi().super_squash_history("user/feedback", repo_type="dataset")
        assert len(hub_server.commits("user/feedback", "dataset")) == 1
        assert hub_server.read("user/feedback", "data/w1.jsonl", "dataset").count(b"\n") == 2
    finally:
        scheduler.stop()


def test_load_dataset_with_two_configs_in_subprocess(hub_server: HubServer) -> None:
    hub_server.seed("user/fb", _feedback_files(), "dataset")
    script = (
        "import json, datasets\n"
        "out = {c: datasets.load_dataset('user/fb', c, split='train').to_list()\n"
        "       for c in ('tweet', 'arena')}\n"
        "print(json.dumps(out))\n"
    )
    # The fixture exported HF_ENDPOINT & co, so a child process needs nothing else.
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert [r["completion"] for r in rows["tweet"]] == ["tweet 0", "tweet 1", "tweet 2"]
    assert rows["arena"] == [{"task": "arena", "chosen": "a", "rejected": "b", "tie": False}]


def test_load_dataset_in_process(
    hub_server: HubServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import datasets

    hub_server.patch_client(monkeypatch, tmp_path / "hf_home")  # again: datasets may be imported only now
    hub_server.seed("user/fb", _feedback_files(), "dataset")
    tweet = datasets.load_dataset("user/fb", "tweet", split="train")
    assert tweet.num_rows == 3 and tweet[0]["reward"] == 0.0


def test_commit_fails_then_succeeds_on_retry(hub_server: HubServer, tmp_path: Path) -> None:
    api = HfApi()
    api.create_repo("user/fb", repo_type="dataset")
    hub_server.faults.scope = COMMITS
    hub_server.faults.fail_next(1, status=500)
    with pytest.raises(HfHubHTTPError, match="500") as err:
        api.upload_file(path_or_fileobj=b"1", path_in_repo="a.txt", repo_id="user/fb", repo_type="dataset")
    assert err.value.response.status_code == 500
    assert hub_server.commit_count("user/fb", "dataset") == 0
    preuploads = [r for r in hub_server.requests if "/preupload/" in r.path]
    assert preuploads and all(r.status == 200 for r in preuploads)  # scope spared everything else

    api.upload_file(path_or_fileobj=b"1", path_in_repo="a.txt", repo_id="user/fb", repo_type="dataset")
    assert hub_server.read("user/fb", "a.txt", "dataset") == b"1"

    # upload_folder retries its commit POST with backoff by itself.
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "b.txt").write_text("2")
    hub_server.faults.fail_next(1, status=503)
    api.upload_folder(folder_path=tmp_path / "up", repo_id="user/fb", repo_type="dataset")
    assert hub_server.read("user/fb", "b.txt", "dataset") == b"2"
    assert hub_server.commit_count("user/fb", "dataset") == 2
    assert len(hub_server.faults.injected) == 2 and hub_server.faults.pending() == 0


def test_down_dropped_delayed_and_refused(hub_server: HubServer) -> None:
    api = HfApi()
    api.create_repo("user/m")
    hub_server.faults.down = True
    with pytest.raises(HfHubHTTPError, match="503") as err:
        api.model_info("user/m")
    assert err.value.response.status_code == 503
    hub_server.faults.down = False

    hub_server.faults.drop_next(1)
    with pytest.raises(httpx2.RemoteProtocolError, match="disconnected"):
        api.model_info("user/m")
    assert hub_server.requests[-1].status == 0

    hub_server.faults.delay = 1.0
    with pytest.raises(httpx2.TimeoutException, match="timed out"):
        api.model_info("user/m", timeout=0.1)
    hub_server.faults.reset()

    hub_server.stop()
    with pytest.raises(httpx2.ConnectError, match="Connection refused"):
        api.model_info("user/m")
    hub_server.start()  # same port: clients recover
    assert api.model_info("user/m").id == "user/m"


def test_space_creation_variables_and_secrets(hub_server: HubServer) -> None:
    api = HfApi()
    api.create_repo(
        "user/demo",
        repo_type="space",
        space_sdk="gradio",
        space_variables=[{"key": "BASE_MODEL", "value": "smollm2"}],
    )
    api.add_space_variable("user/demo", "ADAPTER_REPO", "user/adapters", description="adapters")
    api.add_space_secret("user/demo", "HF_TOKEN", "hf_secret")
    api.upload_file(
        path_or_fileobj=b"import gradio\n", path_in_repo="app.py", repo_id="user/demo", repo_type="space"
    )

    info = api.space_info("user/demo")
    assert info.sdk == "gradio" and info.runtime.stage == "RUNNING"
    assert {k: v.value for k, v in api.get_space_variables("user/demo").items()} == {
        "BASE_MODEL": "smollm2",
        "ADAPTER_REPO": "user/adapters",
    }
    assert list(api.get_space_secrets("user/demo")) == ["HF_TOKEN"]
    assert hub_server.secrets("user/demo") == {"HF_TOKEN": "hf_secret"}
    api.delete_space_variable("user/demo", "BASE_MODEL")
    assert hub_server.variables("user/demo") == {"ADAPTER_REPO": "user/adapters"}
    assert hub_server.read("user/demo", "app.py", "space") == b"import gradio\n"
    assert api.restart_space("user/demo").stage == "RUNNING"


def test_a_read_only_token_reads_but_every_write_is_refused_with_403(hub_server: HubServer) -> None:
    reader = "readonly-token-1234"  # not shaped like hf_..., so only deliberate masking hides it
    hub_server.read_only_tokens.add(reader)
    hub_server.seed("user/fb", {"a.txt": "1"}, "dataset")
    api = HfApi(token=reader)
    assert api.whoami()["auth"]["accessToken"]["role"] == "read"
    assert HfApi().whoami()["auth"]["accessToken"]["role"] == "write"
    assert api.dataset_info("user/fb").sha == hub_server.commits("user/fb", "dataset")[-1].oid
    with pytest.raises(HfHubHTTPError, match="403 Forbidden: You don't have the rights to write") as err:
        api.upload_file(path_or_fileobj=b"2", path_in_repo="b.txt", repo_id="user/fb", repo_type="dataset")
    # The test Hub quotes the token in the first line of the error, so masking tests can fail.
    assert reader in str(err.value).strip().splitlines()[0]
    assert hub_server.commit_count("user/fb", "dataset") == 1
    with pytest.raises(HfHubHTTPError, match="403 Forbidden") as err:
        api.create_repo("user/new", repo_type="dataset")
    assert reader in str(err.value) and not hub_server.exists("user/new", "dataset")
    assert api.create_repo("user/fb", repo_type="dataset", exist_ok=True).repo_id == "user/fb"  # as the Hub does
    with pytest.raises(HfHubHTTPError, match="403 Forbidden"):
        api.delete_repo("user/fb", repo_type="dataset")
    assert hub_server.exists("user/fb", "dataset")


def test_error_answers_quote_the_token_and_a_recreated_repo_is_a_new_repo(hub_server: HubServer) -> None:
    api = HfApi()
    hub_server.faults.fail_next(1, status=500)
    with pytest.raises(HfHubHTTPError, match="500") as err:
        api.whoami()
    assert hub_server.token in str(err.value)
    api.create_repo("user/fb", repo_type="dataset")
    first = api.dataset_info("user/fb").created_at
    api.delete_repo("user/fb", repo_type="dataset")
    api.create_repo("user/fb", repo_type="dataset")
    assert api.dataset_info("user/fb").created_at > first
