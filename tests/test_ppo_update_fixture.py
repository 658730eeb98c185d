"""Seeded PPO runs give the parameters they gave before the update was made faster.

The update's ops were regrouped (fewer, fused tensor operations) to keep every number bit for bit;
SHA-256 digests of these runs recorded from the code before the change (commit ef1af63 of main)
matched the regrouped code on the machine they were recorded on. Digests hold on one CPU only, so
the recorded values (``ppo_update_fixture.json``, from the regrouped code) are sums per tensor,
compared within a tolerance far above rounding across CPUs. This checks it end to end,
with CBP replacing units and with the CleanRL options (clipping, entropy,
minibatch advantage normalization, value clipping) that take the other branches.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import PPO_SMALL, train_ppo, training_state

from cbp_rl.run.logging import read_scalars

SMALL = [
    *PPO_SMALL,
    "--vector-mode", "sync",
    "--plasticity-every", "0",
    "--total-steps", "768",
]  # fmt: skip

CLEANRL = [
    "--preset", "cleanrl",
    "--max-grad-norm", "0.5",
    "--entropy-coef", "0.01",
    "--advantage-norm", "minibatch",
    "--clip-value-loss",
]  # fmt: skip

RUNS = {
    "cbp": ["--cbp", "--maturity-threshold", "10", "--replacement-rate", "0.01"],
    "cleanrl": CLEANRL,
}

RECORDED = Path(__file__).with_name("ppo_update_fixture.json")
RELATIVE_TOLERANCE = 1e-4
"""CPUs round differently (SIMD width, BLAS kernels): runs of the same code with other SIMD kernels
differ by about 1e-6 relative here, and a change to the update moves these sums by far more."""
ABSOLUTE_TOLERANCE = 1e-6
"""For values near zero (the policy loss, about 1e-4, moved 5e-8 between SIMD kernels)."""


def fingerprint(value: Any, key: str = "") -> dict[str, float]:
    """Sum of absolute values of every tensor, array and number of a nested state, by path."""
    if isinstance(value, torch.Tensor):
        return {key: float(value.detach().double().abs().sum())}
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return {key: float(np.abs(value.astype(np.float64)).sum())}
    if isinstance(value, bool | int | float):
        return {key: abs(float(value))}
    if isinstance(value, dict):
        return {
            k: v for name in value for k, v in fingerprint(value[name], f"{key}/{name}").items()
        }
    if isinstance(value, list | tuple):
        return {
            k: v
            for i, item in enumerate(value)
            for k, v in fingerprint(item, f"{key}[{i}]").items()
        }
    return {}


def run_fingerprint(run_dir: Path) -> dict[str, float]:
    """The fingerprint of the agent's checkpointed state and of every logged training scalar."""
    logged = {
        tag: points for tag, points in read_scalars(run_dir).items() if tag.startswith("train/")
    }
    return {
        **fingerprint(training_state(run_dir)["agent"], "agent"),
        **fingerprint(logged, "logged"),
    }


@pytest.mark.parametrize("name", sorted(RUNS))
def test_a_seeded_run_gives_the_recorded_parameters(name: str, tmp_path: Path) -> None:
    assert train_ppo(*SMALL, *RUNS[name], "--run-dir", str(tmp_path)) == 0
    recorded = json.loads(RECORDED.read_text(encoding="utf-8"))[name]
    got = run_fingerprint(tmp_path)
    assert sorted(got) == sorted(recorded)
    for key, want in recorded.items():
        assert math.isclose(
            got[key], want, rel_tol=RELATIVE_TOLERANCE, abs_tol=ABSOLUTE_TOLERANCE
        ), (
            key,
            got[key],
            want,
        )
