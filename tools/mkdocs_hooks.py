"""mkdocs hooks: the API reference, one page per layer of the import contract.

mkdocstrings finds modules statically, in the folders of its ``paths`` option; from the source
tree it would not see ``cbp_rl.agents``, ``cbp_rl.envs`` or ``cbp_rl.supervised`` (setuptools
maps those folders into the package at install time). Before the build this hook makes the
symlink view ``build/api/cbp_rl`` that ``mkdocs.yml`` points mkdocstrings at, reads the layers
of ``[tool.importlinter]`` in ``pyproject.toml`` and writes one reference page per package of
each layer, bottom to top, listing every module the view holds. A module added to the tree is in
the reference at the next build; one that is gone leaves it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from installed_layout import ROOT, installed_layout

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

VIEW = ROOT / "build" / "api"
NAV_TITLE = "API reference"
# Docstrings name objects with Sphinx roles (:class:`X`); the page shows them as code.
SPHINX_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj|const):(?=<code>)")
ALGORITHM_TITLE = "cbp_rl: the algorithm"
ENTRY_POINTS_TITLE = "Entry points"


@dataclass(frozen=True)
class ReferencePage:
    """One generated page: its title, its file under ``docs/api/`` and the modules it shows."""

    title: str
    path: str
    modules: tuple[str, ...]

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for module in self.modules:
            lines += [f"::: {module}", ""]
            if is_package(module):
                lines += ["    options:", "      members: false", ""]
        return "\n".join(lines)


def module_names(view: Path) -> list[str]:
    """Every module of the installed package, as dotted names, packages first within a folder."""
    names = []
    for folder, subfolders, files in os.walk(view / "cbp_rl", followlinks=True):
        subfolders[:] = [name for name in subfolders if name != "__pycache__"]
        for file in (name for name in files if name.endswith(".py")):
            parts = (Path(folder) / file).relative_to(view).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names, key=lambda name: (name.split(".")[:-1], not is_package(name), name))


def is_package(module: str) -> bool:
    return (VIEW / Path(*module.split(".")) / "__init__.py").exists()


def contract_layers() -> list[list[str]]:
    """The layers of the first import-linter layers contract, bottom first, split into siblings."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    layers = next(c["layers"] for c in contracts if c["type"] == "layers")
    return [[name.strip() for name in re.split(r"[|:]", layer)] for layer in reversed(layers)]


def reference_pages(modules: list[str]) -> list[ReferencePage]:
    """One page per package of a layer; root modules of one layer share a page."""
    claimed: set[str] = set()
    pages = []

    def within(prefix: str) -> tuple[str, ...]:
        found = tuple(m for m in modules if m not in claimed and (m + ".").startswith(prefix + "."))
        claimed.update(found)
        return found

    for index, layer in enumerate(contract_layers()):
        plain = [name for name in layer if not is_package(name)]
        if plain:
            bottom = index == 0
            root = ("cbp_rl",) if bottom else ()
            claimed.update(root)
            shown = root + tuple(module for name in plain for module in within(name))
            title, slug = (
                (ALGORITHM_TITLE, "algorithm") if bottom else (ENTRY_POINTS_TITLE, "entry-points")
            )
            pages.append(ReferencePage(title, f"api/{slug}.md", shown))
        for package in (name for name in layer if is_package(name)):
            slug = package.removeprefix("cbp_rl.").replace(".", "-")
            pages.append(ReferencePage(package, f"api/{slug}.md", within(package)))
    rest = tuple(m for m in modules if m not in claimed)
    if rest:
        pages.append(ReferencePage("Other modules", "api/other.md", rest))
    return pages


PAGES: list[ReferencePage] = []


def on_startup(command: str, dirty: bool) -> None:
    """Make the view before any plugin starts: mkdocstrings reads its ``paths`` in its own
    ``on_config``, which runs before this file's (a fresh checkout has no ``build/api`` yet)."""
    installed_layout(VIEW)


def on_config(config: Any) -> Any:
    """Make the page list from the view, and put the pages into the nav."""
    PAGES[:] = reference_pages(module_names(VIEW))
    generated = [{page.title: page.path} for page in PAGES]
    for item in config["nav"] or []:
        if isinstance(item, dict) and NAV_TITLE in item:
            item[NAV_TITLE] = ["api/index.md", *generated]
    return config


def on_files(files: Any, config: Any) -> Any:
    """Add the generated pages to the site."""
    from mkdocs.structure.files import File

    for page in PAGES:
        files.append(File.generated(config, page.path, content=page.markdown()))
    return files


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    """Drop the Sphinx role prefixes (``:class:``) in front of code in the reference pages."""
    if page.file.src_uri.startswith("api/"):
        return SPHINX_ROLE.sub("", html)
    return html
