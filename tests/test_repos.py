"""Adapter specs (`KEY=REF[@REV]`, the one parser) and bounded adapter downloads from the test Hub."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hub.errors import FlywheelError
from hub.repos import (
    AdapterSpec,
    AdapterTooLarge,
    HubLimits,
    adapter_cache,
    download_commit,
    latest_revision,
    parse_adapter_specs,
    resolve_adapter,
)
from tests.adapter_factory import adapter_files, make_adapter, pickled

ROOT = Path(__file__).resolve().parents[1]
REPO = "user/flywheel-tweet-sft"


@pytest.fixture(scope="module")
def files(tiny_causal_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return adapter_files(make_adapter(tiny_causal_lm, tmp_path_factory.mktemp("repos") / "a", seed=1))


def downloads(hub_server) -> list[str]:
    return [record.path for record in hub_server.requests if "/resolve/" in record.path]


def test_specs_name_a_repo_a_pinned_revision_or_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "odd@name"  # a folder that exists is taken as it is, '@' and all
    folder.mkdir()
    specs = parse_adapter_specs(f"tweet=me/a@v2, arena=me/b\ndetox={folder}")
    assert specs == {"tweet": AdapterSpec("me/a", "v2"), "arena": AdapterSpec("me/b"),
                     "detox": AdapterSpec(str(folder))}
    assert [str(spec) for spec in specs.values()] == ["me/a@v2", "me/b", str(folder)]
    assert parse_adapter_specs(["tweet=me/a@refs/pr/1"])["tweet"].revision == "refs/pr/1"
    assert parse_adapter_specs(["challenger=me/c"], arena_sides=(None, "challenger")) == {
        "challenger": AdapterSpec("me/c")}
    assert AdapterSpec.of("me/a@v2") == AdapterSpec.of(AdapterSpec("me/a", "v2"))


@pytest.mark.parametrize("pairs, message", [
    (["tweet"], "SLUG=REPO"),
    (["=me/a"], "SLUG=REPO"),
    (["poetry=me/a"], "neither a task"),
    (["challenger=me/a"], r"nor an arena side \(arena\)"),
    (["tweet=me/a@"], "not REPO@REVISION"),
    (["tweet=@v1"], "not REPO@REVISION"),
    (["tweet=./adapters/tweet@v1"], "cannot be pinned"),
])
def test_bad_specs_are_refused_with_one_clear_line(pairs: list[str], message: str) -> None:
    with pytest.raises(FlywheelError, match=message):
        parse_adapter_specs(pairs)


def test_the_demos_cli_uses_the_same_parser() -> None:
    result = subprocess.run([sys.executable, "-m", "demos", "--adapter", "tweet=./adapters/tweet@v1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: Adapter folder ./adapters/tweet cannot be pinned")


def test_a_commit_is_downloaded_once_then_read_from_the_cache(files, hub_server) -> None:
    revision = hub_server.seed(REPO, {**files, "README.md": b"card", "extra/notes.bin": b"x"})
    path, resolved = resolve_adapter(REPO)
    assert resolved == revision and path == adapter_cache(REPO, revision)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == files  # only the adapter's own files
    fetched = len(hub_server.requests)
    assert resolve_adapter(REPO, revision=revision) == (path, revision)
    assert len(hub_server.requests) == fetched  # a commit never changes: no Hub call at all


def test_a_pin_resolves_to_its_commit(files, hub_server) -> None:
    first = hub_server.seed(REPO, files)
    hub_server.seed(REPO, {"adapter_config.json": b"{}"})
    assert latest_revision(REPO, revision=first[:10]) == first
    assert resolve_adapter(REPO, revision=first[:10])[1] == first
    assert latest_revision(REPO) != first


def test_pickles_come_along_so_that_checks_can_refuse_them(files, hub_server) -> None:
    hub_server.seed(REPO, pickled(files))
    path, _ = resolve_adapter(REPO)
    assert (path / "adapter_model.bin").exists()


def test_an_adapter_over_the_size_limit_is_not_downloaded(files, hub_server) -> None:
    hub_server.seed(REPO, files)
    size = sum(len(data) for data in files.values())
    with pytest.raises(AdapterTooLarge, match=r"over the 0\.0 MiB limit"):
        resolve_adapter(REPO, limits=HubLimits(max_bytes=size - 1))
    assert not downloads(hub_server)


def test_the_size_limit_also_holds_while_streaming(files, hub_server) -> None:
    """When the Hub lists no sizes (or wrong ones), the bytes themselves are counted."""
    revision = hub_server.seed(REPO, files)
    size = sum(len(data) for data in files.values())
    with pytest.raises(AdapterTooLarge, match="over the"):
        download_commit(REPO, revision, sorted(files), limits=HubLimits(max_bytes=size - 1))
    assert not list(adapter_cache(REPO, revision).parent.iterdir())  # no partial download left behind
    path = download_commit(REPO, revision, sorted(files), limits=HubLimits(max_bytes=size))
    assert {p.name: p.read_bytes() for p in path.iterdir()} == files


def test_a_hanging_hub_gives_up_after_the_timeout(hub_server) -> None:
    hub_server.seed(REPO, {"adapter_config.json": b"{}"})
    hub_server.faults.delay = 120  # far longer than the test could wait: only the timeout gets us out
    with pytest.raises(FlywheelError, match=f"Adapter repo {REPO} did not answer within 0.25 s"):
        latest_revision(REPO, limits=HubLimits(timeout=0.25))
    with pytest.raises(FlywheelError, match="did not answer within 0.25 s"):
        resolve_adapter(REPO, limits=HubLimits(timeout=0.25))


def test_a_missing_repo_is_one_clear_line(hub_server) -> None:
    with pytest.raises(FlywheelError, match=f"Adapter repo {REPO} could not be read: 404"):
        resolve_adapter(REPO)
