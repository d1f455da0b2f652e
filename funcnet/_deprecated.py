"""Old spellings that keep working, with a DeprecationWarning naming the new one.

`fn.parallel` is the branch combinator, the plain function `funcnet.combinators.parallel`,
as in stax. It was also the data-parallel module, now `funcnet.sharding`, so old code still
reads the helpers as its attributes (`fn.parallel.make_mesh(...)`) and imports them from
`funcnet.parallel`. The combinator therefore carries the old names as attributes: each
helper a wrapper that warns when called and calls `fn.sharding`'s function
(`__wrapped__`), the constants (AXIS, MODEL_AXIS, MAX_IN_FLIGHT) plain values. The module
`funcnet/parallel.py` warns when imported and puts the combinator in its own place in
`sys.modules`, so `import funcnet.parallel` leaves `fn.parallel` the function. Remove both
when the old spellings go.
"""
from __future__ import annotations

import functools
import warnings

from . import sharding
from .combinators import parallel

__all__ = ["parallel"]


def _moved(name):
    new = getattr(sharding, name)

    @functools.wraps(new)
    def old(*args, **kwargs):
        warnings.warn(f"fn.parallel.{name} is deprecated: use fn.sharding.{name} (fn.parallel "
                      f"is the branch combinator)", DeprecationWarning, stacklevel=2)
        return new(*args, **kwargs)

    return old


for _name in sharding.__all__:
    _value = getattr(sharding, _name)
    setattr(parallel, _name, _moved(_name) if callable(_value) else _value)
