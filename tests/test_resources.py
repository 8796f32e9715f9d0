"""A run's peak memory, its phase, time per phase and hardware: measured, and written into the model card."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.trainer_utils import FAST, dialogsum_file, train
from trainers import sft
from trainers.resources import ResourceMeter, card_section


def test_the_peak_is_found_in_the_phase_that_reached_it() -> None:
    meter = ResourceMeter().start()
    meter.enter("evaluation")
    meter.enter("training")
    block = b"\x01" * (400 * 2**20)  # touched pages: 400 MB more resident
    time.sleep(0.3)  # held long enough for the sampler to see it as well
    del block
    meter.enter("saving")
    summary = meter.summary()

    assert summary["peak_phase"] == "training"
    phases = summary["phases"]
    assert list(phases) == ["loading", "evaluation", "training", "saving"]
    assert phases["training"]["peak_rss_mb"] >= phases["saving"]["peak_rss_mb"] + 300
    assert summary["peak_rss_mb"] == phases["training"]["peak_rss_mb"]
    assert phases["training"]["cpu_seconds"] > 0  # writing 400 MB takes CPU time
    assert summary["hardware"]["cpu_count"] >= 1 and summary["hardware"]["dtype"] == "float32"


def test_restart_begins_a_new_run() -> None:
    meter = ResourceMeter().start()
    meter.enter("training")
    meter.restart()
    assert list(meter.summary()["phases"]) == ["loading"]


def test_every_card_states_peak_memory_training_time_and_hardware(
        tiny_causal_lm: Path, flywheel_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed = dialogsum_file(tmp_path / "dialogsum.jsonl", rows=8)
    argv = ["--task", "dialogue_summary", "--model", str(tiny_causal_lm), "--seed-data", str(seed), *FAST]

    code, _, err = train(sft.main, sft.SFTArgs, argv, capsys)

    assert code == 0, err
    adapter = flywheel_home / "adapters" / "dialogue_summary-sft"
    resources = json.loads((adapter / "resources.json").read_text())
    assert {"loading", "evaluation", "training", "saving"} <= set(resources["phases"])
    assert resources["peak_rss_mb"] > 0 and resources["peak_phase"] in resources["phases"]
    readme = (adapter / "README.md").read_text()
    assert "## Training cost" in readme
    assert card_section(resources).splitlines()[0] in readme  # peak, its phase, training time, hardware
    assert f"{resources['hardware']['cpu_count']} CPU cores" in readme and "float32" in readme
    assert "| training |" in readme
