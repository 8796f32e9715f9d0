"""A real 2-process data-parallel SFT run on CPU (torchrun, gloo): both ranks train, rank 0 alone saves."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.trainer_utils import FAST, dialogsum_file, log_feedback, summary_feedback

ROOT = Path(__file__).resolve().parents[1]


def test_sft_under_torchrun_with_two_processes(tiny_causal_lm: Path, flywheel_home: Path,
                                               tmp_path: Path) -> None:
    log_feedback("dialogue_summary", summary_feedback(6))
    seed = dialogsum_file(tmp_path / "dialogsum.jsonl", rows=14)
    target = tmp_path / "published"
    # --standalone: a local rendezvous on a free port, so parallel test runs do not collide.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(ROOT / "trainers" / "sft.py"), "--task", "dialogue_summary", "--model",
               str(tiny_causal_lm), "--seed-data", str(seed), *FAST, "--push", "--hub-repo", str(target),
               "--force"]
    env = {**os.environ, "FLYWHEEL_HOME": str(flywheel_home), "OMP_NUM_THREADS": "1"}

    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stderr[-3000:]
    pattern = r"\[rank (\d)/2\] sft: 2 optimizer steps, (\d+) batches per epoch"
    ranks = dict(re.findall(pattern, result.stdout))
    assert set(ranks) == {"0", "1"}, result.stdout[-2000:]
    # 20 rows minus 2 held out, batch 2: one process alone would have 9 batches, each rank has half.
    assert int(ranks["0"]) == int(ranks["1"]) == math.ceil(18 / 2 / 2)
    # Only rank 0 evaluates, writes the card and pushes.
    assert result.stdout.count("| metric | before | after |") == 1
    assert result.stdout.count("Pushed adapter to") == 1
    assert (target / "adapter_model.safetensors").exists() and (target / "README.md").exists()
