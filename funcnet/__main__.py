"""`python -m funcnet`: the same as the `funcnet` command (see funcnet/cli.py)."""
import sys

from .cli import _exit_fast, _main

_exit_fast(_main(sys.argv[1:]))
