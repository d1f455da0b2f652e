"""Deprecated: the data-parallel helpers moved to `funcnet.sharding` (fn.sharding.make_mesh,
fn.sharding.shard_batch, ...), and `fn.parallel` is the branch combinator.

`import funcnet.parallel` warns once and puts `fn.parallel`, the combinator function, in this
module's place (see funcnet/_deprecated.py): `from funcnet.parallel import make_mesh` then
still works (the helper warns when called), and the package attribute `fn.parallel` stays
the combinator.
"""
import sys
import warnings

from ._deprecated import parallel

warnings.warn("the module funcnet.parallel is deprecated: the data-parallel helpers are in "
              "funcnet.sharding (fn.sharding.make_mesh, ...); fn.parallel is the branch combinator",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = parallel  # what the import binds, here and as the package attribute
