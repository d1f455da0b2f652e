"""`python -m funcnet`: the same as the `funcnet` command (see funcnet/cli.py)."""
import sys

from .cli import _main_then_exit

_main_then_exit(sys.argv[1:])
