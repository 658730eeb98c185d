"""Seeded PPO runs give the parameters they gave before the update was made faster.

The digests were recorded from the code before the change (commit ef1af63 of main): the update's
ops were regrouped (fewer, fused tensor operations) to keep every number bit for bit, and this
checks it end to end, with CBP replacing units and with the CleanRL options (clipping, entropy,
minibatch advantage normalization, value clipping) that take the other branches.
"""

from __future__ import annotations

import hashlib
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

DIGESTS = {
    "cbp": "985e71c2306b1e4a3f77eb27448ea1569e2af29febf12cde4bf2ccb73e9974d4",
    "cleanrl": "a23cc8fc323801375f60c7a6ad19335a018ad52b8f16f9ffa52b2063aaec9c46",
}


def digest(value: Any, sink: Any) -> None:
    """Feed every tensor, array and plain value of a nested state into ``sink``, keys sorted."""
    if isinstance(value, torch.Tensor):
        sink.update(str((value.dtype, tuple(value.shape))).encode())
        sink.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, np.ndarray):
        sink.update(str((value.dtype, value.shape)).encode() + value.tobytes())
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            sink.update(str(key).encode())
            digest(value[key], sink)
    elif isinstance(value, list | tuple):
        for item in value:
            digest(item, sink)
    else:
        sink.update(repr(value).encode())


def run_digest(run_dir: Path) -> str:
    """SHA-256 of the agent's checkpointed state and of every logged training scalar."""
    sink = hashlib.sha256()
    digest(training_state(run_dir)["agent"], sink)
    scalars = read_scalars(run_dir)
    digest({tag: values for tag, values in scalars.items() if tag.startswith("train/")}, sink)
    return sink.hexdigest()


@pytest.mark.parametrize("name", sorted(RUNS))
def test_a_seeded_run_gives_the_recorded_parameters(name: str, tmp_path: Path) -> None:
    assert train_ppo(*SMALL, *RUNS[name], "--run-dir", str(tmp_path)) == 0
    assert run_digest(tmp_path) == DIGESTS[name]
