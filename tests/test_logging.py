"""Run logs: config.json, TensorBoard scalars read back, purge and CSV truncation on resume."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cbp_rl.run.checkpoint import CheckpointError, CheckpointManager
from cbp_rl.run.logging import RunLogger, read_config, read_scalars, write_json_atomic


@dataclasses.dataclass(frozen=True)
class _Config:
    env: str = "Ant-v4"
    hidden: tuple[int, ...] = (256, 256)
    out: Path = Path("runs/x")
    lr: float = 3e-4
    cbp: bool = True


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "episodes.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_config_json(tmp_path: Path) -> None:
    with RunLogger(tmp_path / "run", _Config()) as logger:
        assert logger.config["hidden"] == [256, 256]
    assert read_config(tmp_path / "run") == {
        "env": "Ant-v4",
        "hidden": [256, 256],
        "out": "runs/x",
        "lr": 3e-4,
        "cbp": True,
    }


def test_write_json_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": (1, 2), "p": Path("/q"), "n": np.float32(0.5)})
    assert json.loads(path.read_text()) == {"a": [1, 2], "p": "/q", "n": 0.5}

    def crash(src: Any, dst: Any) -> None:
        raise OSError("killed")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        write_json_atomic(path, {"b": 1})
    monkeypatch.undo()
    assert json.loads(path.read_text())["a"] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]
    with pytest.raises(TypeError, match=r"x\.json\.f has type builtins\.object"):
        write_json_atomic(path, {"f": object()})


def test_scalars_read_back(tmp_path: Path) -> None:
    with RunLogger(tmp_path, {"seed": 0}) as logger:
        for step in range(0, 50, 10):
            logger.scalar("train/approx_kl", step / 8, step)  # exact in float32
            logger.scalars({"dead_units/0": step, "dead_units/1": -step}, step, prefix="plasticity")
        logger.scalar("train/loss", torch.tensor(1.5), 7)
    scalars = read_scalars(tmp_path)
    assert set(scalars) == {
        "train/approx_kl",
        "train/loss",
        "plasticity/dead_units/0",
        "plasticity/dead_units/1",
    }
    assert scalars["train/approx_kl"] == [(s, s / 8) for s in range(0, 50, 10)]
    assert scalars["plasticity/dead_units/1"] == [(s, -s) for s in range(0, 50, 10)]
    assert scalars["train/loss"] == [(7, 1.5)]


def test_read_scalars_keeps_last_value_per_step(tmp_path: Path) -> None:
    with RunLogger(tmp_path, {}) as logger:
        logger.scalar("a", 1.0, 3)
        logger.scalar("a", 2.0, 3)
        logger.scalar("a", 5.0, 1)
    assert read_scalars(tmp_path)["a"] == [(1, 5.0), (3, 2.0)]
    with pytest.raises(FileNotFoundError):
        read_scalars(tmp_path / "missing")


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # a simulated crash
def test_purge_on_resume(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path, {"seed": 0})
    position = None
    for step in range(1, 11):
        logger.scalar("charts/return", step, step)
        logger.scalar("other", -step, step)
        if step == 4:  # the checkpoint: everything up to step 4 is final
            position = logger.position()
    logger.flush()  # the "crash": steps 5..10 reached the event file, then the process died
    del logger
    assert position is not None

    with RunLogger(tmp_path, {"seed": 0}, resume_step=5, resume_position=position) as logger:
        for step in range(5, 9):
            logger.scalar("charts/return", 100 * step, step)
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    scalars = read_scalars(tmp_path)
    assert scalars["charts/return"] == [(1, 1), (2, 2), (3, 3), (4, 4)] + [
        (s, 100 * s) for s in range(5, 9)
    ]
    # Purge hides steps >= 5 of every tag, also those the resumed run did not write again.
    assert scalars["other"] == [(s, -s) for s in range(1, 5)]


def test_read_scalars_skips_empty_and_truncated_files(tmp_path: Path) -> None:
    with RunLogger(tmp_path, {}) as logger:
        for step in range(20):
            logger.scalar("x", step, step)
    (events,) = tmp_path.glob("events.out.tfevents.*")
    (tmp_path / "events.out.tfevents.9999999999.host.1.0").write_bytes(b"")  # died at once
    data = events.read_bytes()
    events.write_bytes(data[: len(data) - 7])  # killed in the middle of the last record
    assert read_scalars(tmp_path)["x"] == [(s, s) for s in range(19)]


def test_episodes_csv(tmp_path: Path) -> None:
    with RunLogger(tmp_path, {}) as logger:
        logger.episode(100, return_=1.5, length=10, task=0)
        logger.episode(200, return_=-2.25, length=20)  # columns may be left out
        with pytest.raises(ValueError, match=r"unknown episode column\(s\) \['extra'\]"):
            logger.episode(300, return_=1.0, length=1, extra=3)
        with pytest.raises(ValueError, match="first argument"):
            logger.episode(300, step=3)
    assert (tmp_path / "episodes.csv").read_text().splitlines()[0] == "step,return,length,task"
    assert _rows(tmp_path) == [
        {"step": "100", "return": "1.5", "length": "10", "task": "0"},
        {"step": "200", "return": "-2.25", "length": "20", "task": ""},
    ]


def test_csv_truncated_on_resume(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path, {})
    for step in range(1, 4):
        logger.episode(step * 10, return_=step, length=step)
    position = logger.position()
    for step in range(4, 7):  # written after the checkpoint, then the process is killed
        logger.episode(step * 10, return_=step, length=step)
    logger.close()
    assert len(_rows(tmp_path)) == 6

    with RunLogger(tmp_path, {}, resume_step=30, resume_position=position) as logger:
        assert len(_rows(tmp_path)) == 3
        for step in range(4, 6):
            logger.episode(step * 10, return_=-step, length=step)
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == ["10", "20", "30", "40", "50"]
    assert [r["return"] for r in rows] == ["1", "2", "3", "-4", "-5"]


def test_csv_resume_before_first_episode(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path, {})
    position = logger.position()
    assert position == {"episodes_csv_bytes": 0}
    logger.episode(5, return_=1.0, length=5)
    logger.close()
    with RunLogger(tmp_path, {}, resume_step=0, resume_position=position) as logger:
        logger.episode(5, return_=2.0, length=5, task=1)  # header written again, new columns
    assert _rows(tmp_path) == [{"step": "5", "return": "2.0", "length": "5", "task": "1"}]


def test_csv_shorter_than_position_is_an_error(tmp_path: Path) -> None:
    with RunLogger(tmp_path, {}) as logger:
        logger.episode(1, return_=1.0)
        position = logger.position()
    (tmp_path / "episodes.csv").write_text("step\n")
    with pytest.raises(CheckpointError, match="shorter than the") as info:
        RunLogger(tmp_path, {}, resume_step=1, resume_position=position)
    assert "episodes.csv" in str(info.value)


def test_fresh_run_refuses_existing_logs(tmp_path: Path) -> None:
    RunLogger(tmp_path, {}).close()
    with pytest.raises(FileExistsError, match="already holds a run"):
        RunLogger(tmp_path, {})
    with pytest.raises(ValueError, match="go together"):
        RunLogger(tmp_path / "other", {}, resume_step=3)


def test_closed_logger(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path, {})
    logger.close()
    logger.close()
    assert logger.closed
    with pytest.raises(RuntimeError, match="closed"):
        logger.scalar("x", 1.0, 0)


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # a simulated crash
def test_resume_with_checkpoint_manager(tmp_path: Path) -> None:
    """The whole cycle: log + checkpoint, keep logging, crash, resume from the checkpoint."""
    manager = CheckpointManager(tmp_path, every=4)
    logger = RunLogger(tmp_path, {"lr": 0.1})
    for step in range(1, 11):
        logger.scalar("train/x", step, step)
        logger.episode(step, return_=step)
        if manager.due(step):
            manager.save(step, {"log_position": logger.position()})
    logger.flush()  # killed at step 10; last checkpoint at step 8

    state = CheckpointManager(tmp_path, every=4).load_latest(required=True)
    assert state is not None and state["step"] == 8
    with RunLogger(
        tmp_path,
        {"lr": 0.1},
        resume_step=state["step"] + 1,
        resume_position=state["log_position"],
    ) as resumed:
        for step in range(state["step"] + 1, 13):
            resumed.scalar("train/x", 10 * step, step)
            resumed.episode(step, return_=10 * step)
    assert read_scalars(tmp_path)["train/x"] == [(s, s) for s in range(1, 9)] + [
        (s, 10 * s) for s in range(9, 13)
    ]
    assert [int(r["step"]) for r in _rows(tmp_path)] == list(range(1, 13))
    assert [float(r["return"]) for r in _rows(tmp_path)][7:9] == [8.0, 90.0]
