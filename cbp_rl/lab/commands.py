"""The training commands, known in one place.

``python -m cbp_rl.train`` dispatches through :data:`COMMANDS`, a sweep spec's ``command = ...``
is looked up here, ``python -m cbp_rl.evaluate`` finds the policy of a checkpoint's algorithm
here and ``python -m cbp_rl.plot`` a run's performance measure. Each command's module describes
the command once, as ``COMMAND = Command(...)`` (:class:`cbp_rl.run.command.Command`: name,
summary, ``main``, ``parse``, config dataclass, budget, sweep flags, cost model, policy); this
registry only says where the modules are, and imports one when it is first asked for.

The registry sits in the lab (above agents and supervised, below the entry points), so that the
entry points and the lab read it without importing upwards.

Adding a command
----------------
1. Write its module in the package it belongs to (``agents/``, ``supervised/``, ...), with
   ``main(argv) -> int`` and ``parse(argv) -> config`` (a tyro config dataclass whose nested groups
   carry no prefix), and at its end ``COMMAND = Command(name="NAME", summary=..., ...)``. An RL
   command on the shared runner gets its ``COMMAND`` from
   :func:`cbp_rl.agents.cli.rl_command`.
2. Add one line to :data:`MODULES` below: ``"NAME": "cbp_rl.PACKAGE.MODULE"``.

That is all: ``python -m cbp_rl.train NAME`` runs it and ``--help`` lists it, sweep specs take
``command = "NAME"`` (flags checked against its config, ``sweep estimate`` through its ``cost``),
and ``evaluate`` runs its checkpoints if it has a ``load_policy``. ``tests/test_commands.py``
checks every registered module against its line.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator, Mapping

from cbp_rl.run.command import Command, PolicyLoader

__all__ = ["COMMANDS", "MODULES", "CommandRegistry", "UnknownCommandError"]

MODULES: dict[str, str] = {
    "ppo": "cbp_rl.agents.ppo_command",
    "sac": "cbp_rl.agents.sac_command",
    "pmnist": "cbp_rl.supervised.command",
    "regression": "cbp_rl.supervised.regression_command",
    "continual-imagenet": "cbp_rl.supervised.imagenet",
    "incremental-cifar": "cbp_rl.supervised.cifar",
}
"""Each command's name and the module that defines its ``COMMAND``, in the order of ``--help``."""


class UnknownCommandError(KeyError):
    """A command name that is not registered (or whose module is not installed)."""

    def __str__(self) -> str:
        return str(self.args[0])


class CommandRegistry(Mapping[str, Command]):
    """The installed commands by name; a command's module is imported when it is first read."""

    def __init__(self, modules: Mapping[str, str]) -> None:
        self._modules = dict(modules)

    def _installed(self) -> list[str]:
        return [
            name
            for name, module in self._modules.items()
            if importlib.util.find_spec(module) is not None
        ]

    def __getitem__(self, name: str) -> Command:
        if name not in self._modules or importlib.util.find_spec(self._modules[name]) is None:
            raise UnknownCommandError(
                f"unknown command {name!r}; choose one of {', '.join(self._installed())}"
            )
        command: Command = importlib.import_module(self._modules[name]).COMMAND
        if command.name != name:
            raise RuntimeError(
                f"{self._modules[name]}.COMMAND is named {command.name!r}, registered as {name!r}"
            )
        return command

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._installed()

    def __iter__(self) -> Iterator[str]:
        return iter(self._installed())

    def __len__(self) -> int:
        return len(self._installed())

    def policy_loader(self, algorithm: str) -> PolicyLoader:
        """The ``load_policy`` of the command that wrote a checkpoint; raises ``ValueError``
        when that command is not installed or has no policy to evaluate."""
        try:
            command = self[algorithm]
        except UnknownCommandError as err:
            raise ValueError(str(err)) from None
        if command.load_policy is None:
            raise ValueError(f"{algorithm} runs have no policy to evaluate")
        return command.load_policy


COMMANDS = CommandRegistry(MODULES)
"""The installed commands by name (see the module docstring)."""
