"""ruff, mypy and the import layers (import-linter), configured in pyproject.toml, are clean.

mypy cannot follow setuptools' editable-install finder, which maps ``agents/`` to
``cbp_rl.agents`` and so on; it checks a symlink view of the installed layout instead
(``tools/installed_layout.py``, which the docs' API reference reads too).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from installed_layout import installed_layout  # noqa: E402


def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]


def test_ruff_is_clean() -> None:
    pytest.importorskip("ruff", reason="ruff is in the [test] extra")
    result = run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "."])
    assert result.returncode == 0, result.stdout + result.stderr
    result = run([sys.executable, "-m", "ruff", "format", "--check", "."])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "target",
    [["-p", "cbp_rl"], ["benchmarks"]],
    ids=["package", "benchmarks"],  # the benchmarks run by hand: no other test imports them
)
def test_mypy_is_clean(target: list[str]) -> None:
    pytest.importorskip("mypy")
    view = installed_layout(ROOT / "build" / "typecheck")
    result = run(
        [sys.executable, "-m", "mypy", *target],
        env={"MYPYPATH": str(view), "PATH": str(Path(sys.executable).parent)},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_layers_hold(tmp_path: Path) -> None:
    """The layer contract of pyproject.toml ([tool.importlinter]), checked on the installed layout.

    Run from outside the checkout, so that ``cbp_rl`` resolves to the view, not to ``./cbp_rl``.
    """
    pytest.importorskip("importlinter", reason="import-linter is in the [test] extra")
    view = installed_layout(ROOT / "build" / "layers")
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint_imports), str(ROOT / "pyproject.toml")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": str(view), "PATH": str(Path(sys.executable).parent)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
