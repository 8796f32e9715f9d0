"""What a training run cost: peak resident memory per phase, wall and CPU time, and the hardware.

    from trainers.resources import meter
    meter().enter("training")     # phases: loading (from the start), evaluation, training, saving
    meter().summary()             # {"peak_rss_mb": ..., "peak_phase": "training", "phases": {...}, "hardware": {...}}

The lifecycle (`trainers.lifecycle`) moves every trainer through the phases and writes the summary
into `resources.json` and the model card. Memory is the process's resident set: a sampling thread
sees each phase's highs, and the kernel's high-water mark (`ru_maxrss`) makes the overall peak exact
and tells in which phase it was reached, however short the spike.
"""

from __future__ import annotations

import os
import platform
import resource
import threading
import time
from dataclasses import dataclass, field
from typing import Any

SAMPLE_SECONDS = 0.05
PHASES = ("loading", "evaluation", "training", "saving")


@dataclass
class PhaseCost:
    peak_rss_mb: float = 0.0
    seconds: float = 0.0
    cpu_seconds: float = 0.0


@dataclass
class ResourceMeter:
    """Peak RSS per phase (sampled, plus the kernel's high-water mark) and time per phase, in one process."""

    phase: str = "loading"
    phases: dict[str, PhaseCost] = field(default_factory=dict)
    _kernel_peak_mb: float = 0.0
    _since: float = field(default_factory=time.perf_counter)
    _cpu_since: float = field(default_factory=time.process_time)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def start(self) -> ResourceMeter:
        """Start the sampling thread (once); the time before it still counts as `loading`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._sample_forever, name="resource-meter", daemon=True)
            self._thread.start()
        return self

    def restart(self) -> None:
        """Begin a new run's figures (in `loading`): a process that trains several times reports each run."""
        self.start()
        with self._lock:
            self.phases.clear()
            self.phase = "loading"
            self._since, self._cpu_since = time.perf_counter(), time.process_time()
            self._kernel_peak_mb = kernel_peak_rss_mb()  # only a new high-water mark belongs to the new run

    def enter(self, phase: str) -> None:
        """Close the current phase and open `phase` (a phase entered twice adds up)."""
        self.start()
        with self._lock:
            self._close()
            self.phase = phase

    def summary(self) -> dict[str, Any]:
        """The figures so far, the current phase included, as plain JSON-ready values."""
        with self._lock:
            self._close()
        # The kernel's high-water mark went to the phase in which it rose, so the highest phase holds the peak.
        peak_phase, peak = max(((name, cost.peak_rss_mb) for name, cost in self.phases.items()),
                               key=lambda item: item[1])
        return {"peak_rss_mb": round(peak, 1), "peak_phase": peak_phase,
                "phases": {name: {"peak_rss_mb": round(cost.peak_rss_mb, 1), "seconds": round(cost.seconds, 1),
                                  "cpu_seconds": round(cost.cpu_seconds, 1)} for name, cost in self.phases.items()},
                "hardware": hardware()}

    def _close(self) -> None:
        """Add the time since the last boundary to the current phase and settle its peak (lock held)."""
        now, cpu = time.perf_counter(), time.process_time()
        cost = self.phases.setdefault(self.phase, PhaseCost())
        cost.seconds += now - self._since
        cost.cpu_seconds += cpu - self._cpu_since
        self._since, self._cpu_since = now, cpu
        self._record(current_rss_mb())
        kernel = kernel_peak_rss_mb()
        if kernel > self._kernel_peak_mb:  # the high-water mark rose during this phase: its peak is exact
            self._kernel_peak_mb = kernel
            cost.peak_rss_mb = max(cost.peak_rss_mb, kernel)

    def _record(self, rss_mb: float) -> None:
        cost = self.phases.setdefault(self.phase, PhaseCost())
        cost.peak_rss_mb = max(cost.peak_rss_mb, rss_mb)

    def _sample_forever(self) -> None:
        while True:
            rss = current_rss_mb()
            with self._lock:
                self._record(rss)
            time.sleep(SAMPLE_SECONDS)


def current_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def kernel_peak_rss_mb() -> float:
    """This process's highest resident set so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if platform.system() == "Darwin" else peak / 2**10


def hardware() -> dict[str, Any]:
    """CPU count, torch threads and default dtype, the processor, and a GPU if one is used."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "dtype": str(torch.get_default_dtype()).removeprefix("torch."),
            "processor": platform.processor() or platform.machine(), "gpu": gpu}


_METER = ResourceMeter()


def meter() -> ResourceMeter:
    """The process's one meter: every trainer's phases go into it."""
    return _METER


def card_section(summary: dict[str, Any]) -> str:
    """Markdown for a model card: peak memory and where it was reached, time per phase, the hardware."""
    box = summary["hardware"]
    where = f"a {box['gpu']} GPU" if box.get("gpu") else f"{box['cpu_count']} CPU cores ({box['processor']})"
    rows = [f"| {name} | {cost['peak_rss_mb'] / 1024:.2f} | {cost['seconds'] / 60:.1f} | "
            f"{cost['cpu_seconds'] / 60:.1f} |" for name, cost in summary["phases"].items()]
    training = summary["phases"].get("training", {"seconds": 0.0})
    return "\n".join([
        f"Peak memory {summary['peak_rss_mb'] / 1024:.2f} GB resident, reached during {summary['peak_phase']}; "
        f"training took {training['seconds'] / 60:.1f} min on {where}, {box['torch_threads']} torch threads, "
        f"{box['dtype']}. Measured on the machine that trained this adapter.", "",
        "| phase | peak memory (GB) | wall time (min) | CPU time (min) |", "|---|---|---|---|", *rows])
