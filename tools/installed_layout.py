"""A symlink view of ``cbp_rl`` as installed, for tools that read the source tree.

setuptools maps ``agents/``, ``envs/`` and ``supervised/`` into ``cbp_rl.agents``,
``cbp_rl.envs`` and ``cbp_rl.supervised`` at install time (``[tool.setuptools.package-dir]``).
Static tools (mypy, import-linter, the API reference of the docs) cannot follow that mapping in
an editable install, so they read this view: ``VIEW/cbp_rl`` holds the files of ``cbp_rl/`` and
the three folders, as symlinks.

    python tools/installed_layout.py build/api     # makes build/api/cbp_rl
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("agents", "envs", "supervised")


def installed_layout(view: Path) -> Path:
    """Make ``view/cbp_rl`` (replacing an earlier view) and return ``view``."""
    package = view / "cbp_rl"
    if view.exists():
        shutil.rmtree(view)
    package.mkdir(parents=True)
    for entry in (ROOT / "cbp_rl").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name in SUBPACKAGES:
        (package / name).symlink_to(ROOT / name)
    return view


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tools/installed_layout.py VIEW_DIR")
    print(installed_layout(Path(sys.argv[1]).resolve()) / "cbp_rl")
