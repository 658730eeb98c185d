"""``python -m cbp_rl.sweep SPEC|FOLDER``: a whole experiment (settings x seeds) as one command.

The entry point only; the sweep itself is :mod:`cbp_rl.lab.sweep`.
"""

import sys

from cbp_rl.lab.sweep import main

if __name__ == "__main__":
    sys.exit(main())
