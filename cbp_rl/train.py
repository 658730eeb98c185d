"""``python -m cbp_rl.train COMMAND [FLAGS]``: the training commands of cbp_rl.

The commands are those of the registry :mod:`cbp_rl.lab.commands` (each module imported only
when asked for; see there for adding one). ``--help`` after a command lists that command's
flags.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from cbp_rl.lab.commands import COMMANDS
from cbp_rl.run.runtime import quiet_superseded_env_notices


def usage() -> str:
    lines = ["usage: python -m cbp_rl.train COMMAND [FLAGS]   (COMMAND --help for its flags)", ""]
    lines.append("commands:")
    for name, command in COMMANDS.items():
        lines.append(f"  {name:<8} {command.summary}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a command; returns the process exit code."""
    quiet_superseded_env_notices()
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return COMMANDS[name].main(rest)


if __name__ == "__main__":
    sys.exit(main())
