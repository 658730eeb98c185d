"""Runtime helpers: real signals, seeding, devices, the progress bar and run directories."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cbp_rl.run import runtime
from cbp_rl.run.runtime import GracefulStop, Progress, new_run_dir, resolve_device, seed_everything


def _wait_for(stop: GracefulStop) -> None:
    """Give the interpreter a moment to run the Python-level handler."""
    for _ in range(200):
        if stop.requested:
            return
        time.sleep(0.005)


def test_sigterm_requests_stop_and_handlers_are_restored() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with GracefulStop() as stop:
        assert stop.active and not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        _wait_for(stop)
        assert stop.requested and stop.signal == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM changes nothing
        time.sleep(0.01)
        assert stop.signal == signal.SIGTERM
    assert not stop.active
    assert {s: signal.getsignal(s) for s in before} == before


def test_second_sigint_raises_keyboard_interrupt() -> None:
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        _wait_for(stop)
        assert stop.requested and stop.signal == signal.SIGINT
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1.0)  # interrupted long before this ends
        pytest.fail("the second SIGINT did not interrupt")
    assert signal.getsignal(signal.SIGINT) is before


def test_outside_main_thread_is_a_no_op() -> None:
    before = signal.getsignal(signal.SIGTERM)
    seen: list[tuple[bool, bool]] = []

    def worker() -> None:
        with GracefulStop() as stop:
            seen.append((stop.active, stop.requested))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [(False, False)]
    assert signal.getsignal(signal.SIGTERM) is before


def test_graceful_stop_cannot_be_nested() -> None:
    stop = GracefulStop()
    with stop, pytest.raises(RuntimeError, match="already in use"), stop:
        pass


def test_seed_everything() -> None:
    def draw() -> tuple[float, float, list[float]]:
        return random.random(), float(np.random.rand()), torch.rand(2).tolist()

    seed_everything(3)
    first = draw()
    seed_everything(3)
    assert draw() == first
    seed_everything(4)
    assert draw() != first
    for bad in (-1, 2**32, 1.5, True):
        with pytest.raises(ValueError, match="seed"):
            seed_everything(bad)  # type: ignore[arg-type]


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "cuda:x", "CPU", "mps", ""):
        with pytest.raises(ValueError, match="'auto', 'cpu', 'cuda' or 'cuda:N'"):
            resolve_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(RuntimeError, match=r"CUDA is not available.*--device cpu"):
            resolve_device(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(RuntimeError, match=r"only 1 CUDA device\(s\)"):
        resolve_device("cuda:1")


def test_progress_without_tty(capsys: pytest.CaptureFixture[str]) -> None:
    with Progress(1000, initial=200, desc="ppo") as progress:
        assert not progress.enabled  # pytest captures stderr: not a terminal
        progress.update(100, ret=12.5)
        progress.update(50)
        assert progress.n == 350
    progress.close()
    assert capsys.readouterr().err == ""


def test_progress_on_a_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeTTY:
        def __init__(self) -> None:
            self.text = ""

        def write(self, text: str) -> int:
            self.text += text
            return len(text)

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return True

    fake = FakeTTY()
    monkeypatch.setattr(runtime.sys, "stderr", fake)
    progress = Progress(1000, initial=200, desc="ppo")
    assert progress.enabled
    progress.update(300, ret=12.345)
    progress.close()
    assert "ppo" in fake.text and "500/1" in fake.text and "ret=12.3" in fake.text
    disabled = Progress(10, enabled=False)
    disabled.update(5)
    disabled.close()
    assert not disabled.enabled and disabled.n == 5


def test_new_run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "strftime", lambda fmt: "20250102-030405")
    first = new_run_dir(tmp_path / "runs", "ppo-ant")
    (first / "marker").write_text("x")
    second = new_run_dir(tmp_path / "runs", "ppo-ant")
    third = new_run_dir(tmp_path / "runs", "ppo-ant")
    assert [p.name for p in (first, second, third)] == [
        "ppo-ant-20250102-030405",
        "ppo-ant-20250102-030405-1",
        "ppo-ant-20250102-030405-2",
    ]
    assert all(p.is_dir() for p in (first, second, third))
    assert (first / "marker").read_text() == "x"
    for bad in ("", "a/b", ".."):
        with pytest.raises(ValueError, match="run name"):
            new_run_dir(tmp_path, bad)
