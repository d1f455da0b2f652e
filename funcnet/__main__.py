"""`python -m funcnet`: the same as the `funcnet` command (see funcnet/cli.py)."""
import sys

from .cli import main

sys.exit(main())
