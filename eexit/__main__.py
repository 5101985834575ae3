"""``python -m eexit``: the command line of :mod:`eexit.app.cli`."""
import sys

from eexit.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
