"""Runnable studies of the notes behind funcnet: `python -m experiments.NAME [--quick]`."""
