"""``python -m semframe``: the command line (see :mod:`semframe.cli`)."""

import sys

from semframe.cli import main

if __name__ == "__main__":
    sys.exit(main())
