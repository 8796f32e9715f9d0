"""A run's peak memory, its phase, time per phase and hardware: measured, and written into the model card."""

from __future__ import annotations

import time

from trainers.resources import ResourceMeter


def test_the_peak_is_found_in_the_phase_that_reached_it() -> None:
    meter = ResourceMeter().start()
    # A fresh meter gives "loading" the process's high-water mark so far: in a pytest worker that is an
    # earlier test's models (it failed so after the PPO tests). restart(): only new highs count, as in a run.
    meter.restart()
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
