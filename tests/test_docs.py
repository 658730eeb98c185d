"""The documentation: the site builds strictly, docstring examples run, and what it cites is real.

* ``mkdocs build --strict`` (a broken link, anchor or API reference fails it);
* every docstring example of every module of the installed package runs and passes (doctest);
* every project path and every ``cbp_rl.`` name cited in README.md and docs/ exists;
* every flag given to a ``python -m cbp_rl...`` command in them is a flag of that command;
* the architecture page names every module of the tree;
* README.md stays short, and CI (``.ci/run``) runs its test command.
"""

from __future__ import annotations

import doctest
import importlib
import os
import pkgutil
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from installed_layout import SUBPACKAGES  # noqa: E402

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
USER_DOCS = [ROOT / "README.md", *PAGES]
# Top-level folders of this project: a cited path that starts with one of them must exist.
PROJECT_FOLDERS = ("cbp_rl", "agents", "envs", "supervised", "tests", "benchmarks", "experiments")
PROJECT_FOLDERS += ("docs", "tools", ".ci")
# `cbp_rl/...` paths are source paths only for the core; agents/envs/supervised are not in it.
MAPPED_PACKAGES = tuple(f"cbp_rl/{name}/" for name in SUBPACKAGES)


def installed_modules() -> list[str]:
    """Every module of the installed package (``cbp_rl`` and its mapped subpackages)."""
    names = set()
    for root in ("cbp_rl", *(f"cbp_rl.{name}" for name in SUBPACKAGES)):
        package = importlib.import_module(root)
        names.add(root)
        names.update(info.name for info in pkgutil.walk_packages(package.__path__, root + "."))
    return sorted(names)


@pytest.mark.slow
def test_site_builds_strictly(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs is in the [docs] and [test] extras")
    mkdocs = Path(sys.executable).parent / "mkdocs"
    result = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    reference = tmp_path / "site" / "api" / "algorithm" / "index.html"
    assert "ContinualBackprop" in reference.read_text(), "the API reference has no CBP layer"


def test_docstring_examples_run(mnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CBP_RL_DATA_DIR", str(mnist_dir))  # where the data loader's example looks
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    with_examples = []
    for name in installed_modules():
        module = importlib.import_module(name)
        for test in finder.find(module, name):
            if test.examples:
                runner.run(test, out=report.append)
                with_examples.append(test.name)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, "".join(report)
    # The examples really ran: the layer's, the wrappers', the buffer's, the engine's ...
    assert results.attempted >= 40, results
    assert "cbp_rl.cbp.ContinualBackprop" in with_examples


def cited_paths(text: str) -> set[str]:
    """Paths of project files named in inline code or links: ``agents/ppo.py``, (tests/x.py)."""
    candidates = re.findall(r"[`(]([.\w/-]+/[\w.-]+)(?::\w+)?[`)#]", text)
    return {path for path in candidates if path.split("/")[0] in PROJECT_FOLDERS}


@pytest.mark.parametrize("page", USER_DOCS, ids=lambda page: str(page.relative_to(ROOT)))
def test_cited_paths_exist(page: Path) -> None:
    text = page.read_text()
    missing = sorted(path for path in cited_paths(text) if not (ROOT / path).exists())
    assert not missing, f"{page.name} cites paths that do not exist: {missing}"
    mapped = sorted(path for path in cited_paths(text) if path.startswith(MAPPED_PACKAGES))
    assert not mapped, (
        f"{page.name}: source paths are agents/..., envs/..., supervised/...: {mapped}"
    )


def resolves(dotted: str) -> bool:
    """``cbp_rl.a.b.C`` is a module, or an attribute of the longest importable module prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


@pytest.mark.parametrize("page", USER_DOCS, ids=lambda page: str(page.relative_to(ROOT)))
def test_cited_names_exist(page: Path) -> None:
    """Every ``cbp_rl.x.Y`` the docs name is importable: modules, classes, functions."""
    names = set(re.findall(r"(?<![\w.])(cbp_rl(?:\.[A-Za-z_]\w*)+)", page.read_text()))
    missing = sorted(name for name in names if not resolves(name))
    assert not missing, f"{page.name} names what cbp_rl does not have: {missing}"


COMMAND = re.compile(r"python -m (cbp_rl\.(?:train|evaluate|sweep|plot))((?: [^\s`|#]+)*)")
SUBCOMMANDS = {
    "cbp_rl.train": ("ppo", "sac", "pmnist", "regression"),
    "cbp_rl.sweep": ("status", "validate", "estimate"),
}


def commands_in(text: str) -> list[tuple[str, str, list[str]]]:
    """``(module, subcommand, flags)`` of each ``python -m cbp_rl...`` command in a text."""
    found = []
    for module, rest in COMMAND.findall(text):
        words = shlex.split(rest.replace("\\|", "|"), posix=False)
        subcommand = words[0] if words and words[0] in SUBCOMMANDS.get(module, ()) else ""
        flags = [word.split("=")[0] for word in words if re.fullmatch(r"--[a-z][\w-]*(=.*)?", word)]
        found.append((module, subcommand, flags))
    return found


@cache
def help_text(module: str, subcommand: str) -> str:
    runs = [module] if module.endswith(".py") else ["-m", module]  # a script, or a module
    argv = [sys.executable, *runs, *([subcommand] if subcommand else []), "--help"]
    wide = {**os.environ, "COLUMNS": "200"}  # flags are never wrapped
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False, env=wide)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
def test_commands_in_docs_have_their_flags() -> None:
    """Each flag of a documented command appears in that command's ``--help``."""
    unknown = []
    for page in USER_DOCS:
        for module, subcommand, flags in commands_in(page.read_text()):
            if module == "cbp_rl.train" and not subcommand:
                continue  # a newer command documented on another branch's page
            text = help_text(module, subcommand)
            unknown += [
                f"{page.name}: {module} {subcommand} {flag}"
                for flag in flags
                if not re.search(rf"{re.escape(flag)}\b", text)
            ]
    assert not unknown, "flags that the commands do not have:\n" + "\n".join(unknown)


def tree_in(page: str) -> set[str]:
    """The files of the first ``text`` code block of a page drawn as an indented tree.

    One entry a line, two spaces a level; a folder ends with ``/``; the words after an entry
    describe it.
    """
    block = page.split("```text\n", 1)[1].split("```", 1)[0]
    files, folders = set(), []
    for line in block.splitlines():
        match = re.match(r"( *)(\S+)", line)
        if not match:
            continue
        depth, entry = len(match.group(1)) // 2, match.group(2)
        del folders[depth:]
        if entry.endswith("/"):
            folders.append(entry)
        elif entry.endswith(".py"):
            files.add("".join(folders) + entry)
    return files


TRAIN = [("cbp_rl.train", name) for name in SUBCOMMANDS["cbp_rl.train"]]
SWEEP = [("cbp_rl.sweep", ""), *(("cbp_rl.sweep", name) for name in SUBCOMMANDS["cbp_rl.sweep"])]
# The commands whose flags a guide page documents (in tables and prose, not only in commands).
EVALUATE, PLOT = ("cbp_rl.evaluate", ""), ("cbp_rl.plot", "")
PAGE_COMMANDS = {
    "ppo.md": [("cbp_rl.train", "ppo"), EVALUATE],
    "sac.md": [("cbp_rl.train", "sac"), EVALUATE],
    "pmnist.md": [("cbp_rl.train", "pmnist"), PLOT],
    "regression.md": [
        ("cbp_rl.train", "regression"),
        PLOT,
        ("experiments/regression_evidence.py", ""),
    ],
    "evaluate.md": [EVALUATE],
    "sweep.md": [*SWEEP, *TRAIN, PLOT],
    "plot.md": [PLOT, *TRAIN],
    "envs.md": TRAIN,
}
OTHER_TOOLS_FLAGS = {"--logdir"}  # tensorboard --logdir runs


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PAGE_COMMANDS))
def test_guide_pages_document_real_flags(name: str) -> None:
    """Every ``--flag`` a command's guide names anywhere is a flag of its commands."""
    page = DOCS / name
    text = "".join(help_text(*command) for command in PAGE_COMMANDS[name])
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", page.read_text()))
    unknown = sorted(
        flag for flag in flags - OTHER_TOOLS_FLAGS if not re.search(rf"{re.escape(flag)}\b", text)
    )
    assert not unknown, f"docs/{name} names flags its commands do not have: {unknown}"


def test_architecture_page_draws_the_tree() -> None:
    """docs/architecture.md's tree holds every module of the package, and no other."""
    drawn = tree_in((DOCS / "architecture.md").read_text())
    real = {
        str(path.relative_to(ROOT))
        for folder in ("cbp_rl", *SUBPACKAGES)
        for path in (ROOT / folder).rglob("*.py")
        if path.name != "__init__.py"
    }
    assert not real - drawn, f"docs/architecture.md does not show {sorted(real - drawn)}"
    assert not drawn - real, (
        f"docs/architecture.md shows files that do not exist: {sorted(drawn - real)}"
    )


def test_readme_layer_quickstart_runs() -> None:
    """The README's Python quickstart, on a stream of random digits-sized batches."""
    import torch

    code = (ROOT / "README.md").read_text().split("```python\n", 1)[1].split("```", 1)[0]
    generator = torch.Generator().manual_seed(0)
    stream = [
        (torch.rand(8, 784, generator=generator), torch.randint(0, 10, (8,), generator=generator))
        for _ in range(260)  # units mature at step 101; each layer replaces one by step 201
    ]
    namespace: dict[str, object] = {"stream": stream}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny steps: a second thread on a busy core only waits
    try:
        exec(code, namespace)
    finally:
        torch.set_num_threads(threads)
    cbp = namespace["cbp"]
    assert sum(cbp.replacement_counts()) > 0  # type: ignore[attr-defined]


def test_readme_is_short_and_ci_runs_its_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 250
    first_block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    install_and_run, install_and_test = (
        line.split("  #")[0].strip() for line in first_block.splitlines()[:2]
    )
    assert install_and_run.startswith("pip install") and "python -m cbp_rl.train" in install_and_run
    assert install_and_test in (ROOT / ".ci" / "run").read_text()
