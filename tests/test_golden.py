"""Golden losses: the tiny MLM and CLM runs reproduce, step for step, the losses recorded before the objectives
became plug-ins (tests/golden/losses.json, written by tests/golden/record_losses.py at b4de1bf's code).
CPU, fp32, one thread, seed 42, stored tokenizers."""

import json
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))

from record_losses import STEPS, run_losses  # noqa: E402


@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_per_step_losses_match_the_recorded_run(objective, tmp_path):
    recorded = json.loads((GOLDEN / "losses.json").read_text())[objective]
    measured = run_losses(objective, tmp_path)
    assert len(measured["losses"]) == len(recorded["losses"]) == STEPS
    for step, (now, then) in enumerate(zip(measured["losses"], recorded["losses"]), start=1):
        assert now == pytest.approx(then, abs=1e-6, rel=0), f"step {step}: {now} != recorded {then}"
    assert measured["eval_loss"] == pytest.approx(recorded["eval_loss"], abs=1e-6, rel=0)
