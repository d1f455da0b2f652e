# funcnet's XLA CPU flags (unless XLA_FLAGS is set or JAX already started), as users get them
# from the `funcnet` command; benchmarks/xla_flags.py sets its own per child process.
from funcnet._xla_env import apply_xla_defaults

apply_xla_defaults()
