"""``python -m cbp_rl.train COMMAND [FLAGS]``: the training commands of cbp_rl.

Each command lives in its own module, imported only when asked for, and exposes
``main(argv: list[str]) -> int`` (parsing its own flags with tyro). ``--help`` after a command
lists that command's flags.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence
from typing import NamedTuple

from cbp_rl.run.runtime import quiet_superseded_env_notices


class Command(NamedTuple):
    module: str
    summary: str


COMMANDS: dict[str, Command] = {
    "ppo": Command(
        "cbp_rl.agents.ppo_command",
        "PPO (with --cbp: continual backprop) on any continuous-action Gymnasium MuJoCo env",
    ),
    "sac": Command(
        "cbp_rl.agents.sac_command",
        "SAC (with --cbp: continual backprop) on any continuous-action Gymnasium MuJoCo env",
    ),
    "pmnist": Command(
        "cbp_rl.supervised.command",
        "online permuted MNIST: backprop, L2, shrink-and-perturb, ..., continual backprop",
    ),
    "continual-imagenet": Command(
        "cbp_rl.supervised.imagenet",
        "continual ImageNet: binary tasks for a conv net (bp, l2, snp, cbp)",
    ),
    "incremental-cifar": Command(
        "cbp_rl.supervised.cifar",
        "class-incremental CIFAR-100 with ResNet-18 (base, head reset, snp, retrain, cbp)",
    ),
}


def available_commands() -> dict[str, Command]:
    """The commands whose module is installed."""
    return {
        name: command
        for name, command in COMMANDS.items()
        if importlib.util.find_spec(command.module) is not None
    }


def usage() -> str:
    lines = ["usage: python -m cbp_rl.train COMMAND [FLAGS]   (COMMAND --help for its flags)", ""]
    lines.append("commands:")
    for name, command in available_commands().items():
        lines.append(f"  {name:<18} {command.summary}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a command; returns the process exit code."""
    quiet_superseded_env_notices()
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    commands = available_commands()
    if name not in commands:
        print(f"unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(commands[name].module)
    result: int = module.main(rest)
    return result


if __name__ == "__main__":
    sys.exit(main())
