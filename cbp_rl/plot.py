"""``python -m cbp_rl.plot DIR... [--out DIR]``: figures (PNG) and summary tables of runs.

The entry point only; the readers and figures are :mod:`cbp_rl.lab.plot`.
"""

import sys

from cbp_rl.lab.plot import main

if __name__ == "__main__":
    sys.exit(main())
