"""FLYWHEEL_HOME: one rule, with a Space's persistent storage passed in as a plain folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.paths import choose_home, feedback_home, flywheel_home

SPACE = {"SPACE_ID": "user/flywheel"}


def test_on_a_space_with_persistent_storage_the_home_is_on_it(tmp_path: Path) -> None:
    storage = tmp_path / "data"
    storage.mkdir()
    home = choose_home(SPACE, persistent_root=storage)
    assert home.path == storage / "flywheel" and home.warning is None
    inside = choose_home({**SPACE, "FLYWHEEL_HOME": str(storage / "mine")}, persistent_root=storage)
    assert inside.path == storage / "mine" and inside.warning is None


def test_on_a_space_without_persistent_storage_there_is_a_warning(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    home = choose_home(SPACE, persistent_root=tmp_path / "absent")
    assert home.path == tmp_path / ".flywheel"
    assert home.warning.startswith(f"This Space has no persistent storage ({tmp_path / 'absent'})")
    assert "wiped when the Space restarts" in home.warning
    not_a_directory = tmp_path / "data-file"
    not_a_directory.write_text("x")
    assert choose_home(SPACE, persistent_root=not_a_directory).warning.startswith("This Space has no persistent")


def test_an_explicit_home_outside_persistent_storage_is_kept_with_a_warning(tmp_path: Path) -> None:
    storage = tmp_path / "data"
    storage.mkdir()
    home = choose_home({**SPACE, "FLYWHEEL_HOME": str(tmp_path / "scratch")}, persistent_root=storage)
    assert home.path == tmp_path / "scratch"
    assert home.warning.startswith(f"FLYWHEEL_HOME={tmp_path / 'scratch'} is outside the persistent storage")


def test_off_a_space_storage_is_not_looked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = tmp_path / "data"
    storage.mkdir()
    monkeypatch.chdir(tmp_path)
    assert choose_home({}, persistent_root=storage) == choose_home({}, persistent_root=tmp_path / "absent")
    assert choose_home({}, persistent_root=storage).path == tmp_path / ".flywheel"
    assert choose_home({"FLYWHEEL_HOME": "~/fw"}, persistent_root=storage).path == Path("~/fw").expanduser()


def test_the_home_functions_use_the_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLYWHEEL_HOME")
    monkeypatch.chdir(tmp_path)
    assert flywheel_home() == tmp_path / ".flywheel" and feedback_home() == tmp_path / ".flywheel" / "feedback"
