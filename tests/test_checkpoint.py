"""Checkpoint files: round trips, atomicity, corruption, config mismatch, RNG and exact resume."""

from __future__ import annotations

import dataclasses
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from cbp_rl.run.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    CheckpointManager,
    CheckpointWarning,
    atomic_write,
    capture_rng_state,
    check_compatible,
    load_checkpoint,
    numpy_generator_state,
    restore_numpy_generator,
    restore_rng_state,
    restore_torch_generator,
    save_checkpoint,
    to_jsonable,
    torch_generator_state,
)


def _trained_model() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = model(torch.randn(8, 3)).pow(2).mean()
    loss.backward()
    optimizer.step()
    return model, optimizer


def _assert_same(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert type(a) is type(b) and a == b


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --------------------------------------------------------------------------- save / load


def test_round_trip_keeps_every_value(tmp_path: Path) -> None:
    model, optimizer = _trained_model()
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),  # int keys, nested lists of dicts
        "counters": {"step": 12, "episodes": 3, "lr": 3e-4, "done": False, "note": None},
        "schedule": [("friction", 0.5), ("mass", 2.0)],
        "buffers": {"age": torch.arange(4, dtype=torch.int64), "util": torch.rand(4)},
        "name": "ppo",
    }
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    _assert_same(state, loaded)
    # The file loads with plain torch.load(weights_only=True) and carries the format marker.
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["format_version"] == FORMAT_VERSION
    assert set(raw) == {"format", "format_version", "torch_version", "saved_at", "state"}
    # What was loaded restores a model and an optimizer.
    model2, optimizer2 = _trained_model()
    model2.load_state_dict(loaded["model"])
    optimizer2.load_state_dict(loaded["optimizer"])


@pytest.mark.parametrize(
    ("state", "where", "hint"),
    [
        ({"obs_rms": {"mean": np.zeros(3)}}, "state['obs_rms']['mean']", "torch.from_numpy"),
        ({"x": [1, np.float64(2.0)]}, "state['x'][1]", ".item()"),
        ({"rng": np.random.default_rng(0)}, "state['rng']", "numpy_generator_state"),
        ({"net": nn.Linear(1, 1)}, "state['net']", "state_dict()"),
        ({"s": {1, 2}}, "state['s']", "builtins.set"),
    ],
)
def test_unsafe_state_names_key_and_writes_nothing(
    tmp_path: Path, state: dict[str, Any], where: str, hint: str
) -> None:
    path = tmp_path / "ckpt.pt"
    with pytest.raises(TypeError) as info:
        save_checkpoint(path, state)
    assert where in str(info.value) and hint in str(info.value)
    assert "weights_only" in str(info.value)
    assert _files(tmp_path) == []


def test_crash_during_replace_keeps_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"version": 1})

    def crash(src: Any, dst: Any) -> None:
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(path, {"version": 2})
    monkeypatch.undo()
    assert load_checkpoint(path) == {"version": 1}
    assert _files(tmp_path) == ["ckpt.pt"]  # no temporary file left


def test_crash_while_writing_keeps_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"version": 1})
    real_save = torch.save

    def half_save(obj: Any, f: Any) -> None:
        real_save(obj, f)
        f.truncate(100)
        raise KeyboardInterrupt  # e.g. Ctrl+C in the middle of the write

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"version": 2})
    monkeypatch.undo()
    assert load_checkpoint(path) == {"version": 1}
    assert _files(tmp_path) == ["ckpt.pt"]


def test_atomic_write_honours_umask(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    atomic_write(path, lambda f: f.write(b"abc"))
    assert path.read_bytes() == b"abc"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "does not exist" in message and "Fix:" in message
    assert info.value.path == path


def _tensor_checkpoint(path: Path) -> bytes:
    save_checkpoint(path, {"w": torch.arange(4096, dtype=torch.float32), "step": 7})
    return path.read_bytes()


@pytest.mark.parametrize("keep", [0, 10, 0.5, -1])
def test_truncated_file(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "ckpt.pt"
    data = _tensor_checkpoint(path)
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    path.write_bytes(data[:cut])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "corrupt or truncated" in message
    assert "checkpoint.prev.pt" in message  # the fix


def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_bit_flip_in_tensor_data_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    data = bytearray(_tensor_checkpoint(path))
    offset = bytes(data).find(np.arange(2000, 2004, dtype=np.float32).tobytes())
    assert offset > 0
    data[offset] ^= 0xFF  # torch.load alone would return the wrong number here
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="CRC"):
        load_checkpoint(path)


def test_foreign_files(tmp_path: Path) -> None:
    bare = tmp_path / "bare.pt"
    torch.save({"weight": torch.ones(2)}, bare)
    with pytest.raises(CheckpointError, match="not a cbp_rl checkpoint"):
        load_checkpoint(bare)

    pickled = tmp_path / "pickled.pt"
    torch.save({"format": FORMAT, "obj": Path("x")}, pickled)
    with pytest.raises(CheckpointError, match=r"weights_only=True\) refuses"):
        load_checkpoint(pickled)

    plain_pickle = tmp_path / "plain.pkl"
    plain_pickle.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(plain_pickle)

    newer = tmp_path / "newer.pt"
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION + 1, "state": {}}, newer)
    with pytest.raises(CheckpointError, match=f"format version {FORMAT_VERSION + 1}"):
        load_checkpoint(newer)

    with pytest.raises(CheckpointError, match="is not a file"):
        load_checkpoint(tmp_path)


def test_error_pickles() -> None:
    err = CheckpointError("is broken", "/x/ckpt.pt", "do this")
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.fix == "do this"


# --------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class _Config:
    env: str = "Ant-v4"
    lr: float = 3e-4
    hidden: tuple[int, ...] = (64, 64)
    out: Path = Path("runs")
    total_steps: int = 1000


def test_check_compatible_accepts_json_round_trip() -> None:
    saved = to_jsonable(_Config())  # as read back from config.json: lists and strings
    assert saved["hidden"] == [64, 64] and saved["out"] == "runs"
    check_compatible(saved, _Config())


def test_check_compatible_lists_each_difference() -> None:
    saved = {**to_jsonable(_Config()), "nested": {"a": 1, "b": True}, "gone": 5}
    current = {
        **to_jsonable(_Config(env="Hopper-v4", hidden=(32,), total_steps=2000)),
        "nested": {"a": 1, "b": 1},
        "new": "x",
    }
    with pytest.raises(CheckpointError) as info:
        check_compatible(saved, current, ignore=("total_steps",), path="run/checkpoint.pt")
    message = str(info.value)
    assert "differs from the checkpoint's in 5 field(s)" in message
    assert "env: saved 'Ant-v4', current 'Hopper-v4'" in message
    assert "hidden: saved [64, 64], current [32]" in message
    assert "nested.b: saved True, current 1" in message
    assert "gone: saved 5, current <absent>" in message
    assert "new: saved <absent>, current 'x'" in message
    assert "total_steps" not in message and "run/checkpoint.pt" in message
    # Ignoring a parent name ignores its nested fields.
    everything = ("env", "hidden", "nested", "gone", "new", "total_steps")
    check_compatible(saved, current, ignore=everything)


def test_check_compatible_nan_and_numbers() -> None:
    check_compatible({"x": float("nan"), "y": 1}, {"x": float("nan"), "y": 1.0})


# --------------------------------------------------------------------------- RNG


def _draw() -> tuple[float, float, float, float, list[float]]:
    return (
        random.random(),
        random.gauss(0.0, 1.0),
        float(np.random.rand()),
        float(np.random.randn()),
        torch.rand(3).tolist(),
    )


def test_rng_state_restores_all_three(tmp_path: Path) -> None:
    random.gauss(0.0, 1.0)  # leave a cached gaussian in both Python and numpy
    np.random.randn()
    state = capture_rng_state()
    first = _draw()
    assert _draw() != first
    restore_rng_state(state)
    assert _draw() == first
    # Through a checkpoint file.
    save_checkpoint(tmp_path / "rng.pt", {"rng": state})
    _draw()
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert _draw() == first


@pytest.mark.parametrize("bit_generator", [np.random.PCG64, np.random.MT19937, np.random.Philox])
def test_numpy_generator_state_round_trip(tmp_path: Path, bit_generator: Any) -> None:
    generator = np.random.Generator(bit_generator(123))
    generator.random(5)
    generator.integers(0, 10, size=3, dtype=np.uint32)  # leaves a buffered uint32
    save_checkpoint(tmp_path / "g.pt", {"g": numpy_generator_state(generator)})
    expected = generator.random(4)
    other = np.random.Generator(bit_generator(999))
    restore_numpy_generator(other, load_checkpoint(tmp_path / "g.pt")["g"])
    np.testing.assert_array_equal(other.random(4), expected)
    with pytest.raises(ValueError, match="same bit generator"):
        sfc = np.random.Generator(np.random.SFC64(0))
        restore_numpy_generator(sfc, numpy_generator_state(other))


def test_torch_generator_state_round_trip(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(5)
    torch.rand(3, generator=generator)
    save_checkpoint(tmp_path / "g.pt", {"g": torch_generator_state(generator)})
    expected = torch.rand(4, generator=generator)
    other = torch.Generator().manual_seed(6)
    restore_torch_generator(other, load_checkpoint(tmp_path / "g.pt")["g"])
    assert torch.equal(torch.rand(4, generator=other), expected)


def test_cuda_rng_state_without_cuda_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    state = capture_rng_state()
    state["torch_cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(CheckpointWarning, match="CUDA is not available"):
        restore_rng_state(state)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_state_round_trip(tmp_path: Path) -> None:
    torch.rand(1, device="cuda")  # initializes CUDA
    save_checkpoint(tmp_path / "rng.pt", {"rng": capture_rng_state()})
    expected = torch.rand(5, device="cuda")
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert torch.equal(torch.rand(5, device="cuda"), expected)


def test_restore_rng_state_rejects_other_dicts() -> None:
    with pytest.raises(ValueError, match="capture_rng_state"):
        restore_rng_state({"torch": torch.get_rng_state()})


# --------------------------------------------------------------------------- manager


def test_manager_due_schedule(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, every=100)
    due = []
    for step in range(0, 1001, 64):  # steps that are not multiples of `every`
        if manager.due(step):
            manager.save(step, {})
            due.append(step)
    assert due == [128, 256, 320, 448, 512, 640, 704, 832, 960]
    assert not CheckpointManager(tmp_path, every=0).due(10**9)
    with pytest.raises(ValueError, match="every"):
        CheckpointManager(tmp_path, every=-1)


def test_manager_save_load_and_previous(tmp_path: Path) -> None:
    run = tmp_path / "run"
    manager = CheckpointManager(run, every=10)
    assert not manager.exists() and manager.load_latest() is None
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        manager.load_latest(required=True)
    manager.save(10, {"x": torch.tensor([1.0])})
    manager.save(20, {"x": torch.tensor([2.0])})
    assert manager.exists() and _files(run) == ["checkpoint.prev.pt", "checkpoint.pt"]
    assert load_checkpoint(manager.prev_path)["step"] == 10

    resumed = CheckpointManager(run, every=10)
    state = resumed.load_latest()
    assert state is not None and state["step"] == 20 and state["x"].item() == 2.0
    assert resumed.last_step == 20 and not resumed.due(29) and resumed.due(30)
    with pytest.raises(ValueError, match="step"):
        resumed.save(30, {"step": 31})


def test_manager_corrupt_latest_falls_back_only_when_asked(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    manager.save(1, {"v": 1})
    manager.save(2, {"v": 2})
    manager.path.write_bytes(manager.path.read_bytes()[:50])  # truncated latest

    with pytest.raises(CheckpointError) as info:
        CheckpointManager(tmp_path).load_latest()
    message = str(info.value)
    assert (
        "corrupt or truncated" in message
        and "--resume-fallback" in message
        and message.count("Fix:") == 1
    )
    assert str(manager.prev_path) in message

    resumed = CheckpointManager(tmp_path)
    with pytest.warns(CheckpointWarning, match="resuming from the previous checkpoint"):
        state = resumed.load_latest(fallback=True)
    assert state == {"v": 1, "step": 1}
    # The next save must not rotate the bad latest over the good previous checkpoint.
    resumed.save(2, {"v": 22})
    assert load_checkpoint(resumed.prev_path)["v"] == 1
    assert CheckpointManager(tmp_path).load_latest() == {"v": 22, "step": 2}


def test_manager_both_corrupt(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    manager.save(1, {})
    manager.save(2, {})
    for path in (manager.path, manager.prev_path):
        path.write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="both checkpoints are unusable"):
        manager.load_latest(fallback=True)


def test_manager_kill_during_save_keeps_latest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = CheckpointManager(tmp_path)
    manager.save(1, {"v": 1})
    manager.save(2, {"v": 2})
    real_replace = os.replace

    def crash_on_final_rename(src: Any, dst: Any) -> None:
        if Path(dst) == manager.path:
            raise OSError("killed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_final_rename)
    with pytest.raises(OSError, match="killed"):
        manager.save(3, {"v": 3})
    monkeypatch.undo()
    assert CheckpointManager(tmp_path).load_latest() == {"v": 2, "step": 2}
    assert _files(tmp_path) == ["checkpoint.prev.pt", "checkpoint.pt"]
    # A temporary file left by a SIGKILL is ignored by loading and removed by the next save.
    (tmp_path / ".checkpoint.pt.deadbeef.tmp").write_bytes(b"partial")
    assert CheckpointManager(tmp_path).load_latest() == {"v": 2, "step": 2}
    manager.save(3, {"v": 3})
    assert _files(tmp_path) == ["checkpoint.prev.pt", "checkpoint.pt"]


def test_manager_rejects_unsafe_state_before_touching_files(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    manager.save(1, {"v": 1})
    with pytest.raises(TypeError, match=r"state\['bad'\]"):
        manager.save(2, {"bad": np.ones(2)})
    assert _files(tmp_path) == ["checkpoint.pt"]
    assert manager.load_latest() == {"v": 1, "step": 1}


# --------------------------------------------------------------------------- exact resume


def _train(
    model: nn.Module, optimizer: torch.optim.Optimizer, rng: np.random.Generator, steps: int
) -> None:
    for _ in range(steps):
        x = torch.randn(16, 3) + float(rng.normal())  # torch global RNG and a numpy Generator
        mask = (torch.rand(16, 1) > 0.2).float()
        if random.random() < 0.5:  # Python's random
            x = x * 2
        loss = (model(x) * mask).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_half_and_resumed_half_equal_one_run(tmp_path: Path) -> None:
    def fresh() -> tuple[nn.Module, torch.optim.Optimizer, np.random.Generator]:
        torch.manual_seed(1)
        random.seed(1)
        model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
        return model, torch.optim.Adam(model.parameters(), lr=1e-2), np.random.default_rng(1)

    model, optimizer, rng = fresh()
    _train(model, optimizer, rng, 20)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    model, optimizer, rng = fresh()
    _train(model, optimizer, rng, 10)
    CheckpointManager(tmp_path).save(
        10,
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "env_rng": numpy_generator_state(rng),
            "rng": capture_rng_state(),
        },
    )
    _train(model, optimizer, rng, 5)  # work lost to a kill

    model, optimizer, rng = fresh()
    torch.manual_seed(99)  # the new process starts from other RNG states
    state = CheckpointManager(tmp_path).load_latest(required=True)
    assert state is not None
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    restore_numpy_generator(rng, state["env_rng"])
    restore_rng_state(state["rng"])
    _train(model, optimizer, rng, 20 - state["step"])
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key
