"""``python -m eexit``: the command line of :mod:`eexit.cli`."""
import sys

from eexit.cli import main

if __name__ == "__main__":
    sys.exit(main())
