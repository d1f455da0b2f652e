"""Old spellings that keep working, with a DeprecationWarning naming the new one.

`fn.parallel` is the branch combinator `funcnet.combinators.parallel` (as in stax). It was
also the data-parallel module, now `funcnet.sharding`, so old code still reads the helpers
as its attributes (`fn.parallel.make_mesh(...)`) and imports them from `funcnet.parallel`.
A function's attributes cannot be computed when read, so `fn.parallel` is `parallel` below:
an object whose call *is* the combinator (the arguments passed through, its Layer returned
as is; signature and docstring are the combinator's, `__wrapped__` is the function) and
whose other attributes are the moved helpers, each read with a warning. The module
`funcnet/parallel.py` installs this same object as `sys.modules["funcnet.parallel"]`, so
`import funcnet.parallel` leaves `fn.parallel` the combinator. Remove both when the old
spellings go.
"""
from __future__ import annotations

import functools
import warnings

from .combinators import parallel as _parallel


class _Parallel:
    """`fn.parallel`: calling it calls the combinator; reading a data-parallel helper's
    old name from it warns and returns `funcnet.sharding`'s."""

    def __init__(self):
        functools.update_wrapper(self, _parallel)

    def __call__(self, *args, **kwargs):
        return self.__wrapped__(*args, **kwargs)

    def __getattr__(self, name):  # only names the object lacks: the moved helpers
        if name.startswith("__"):  # probes such as __signature__ do not load the helpers
            raise AttributeError(name)
        from . import sharding
        if name not in sharding.__all__:
            raise AttributeError(f"fn.parallel (the branch combinator) has no attribute {name!r}")
        warnings.warn(f"fn.parallel.{name} is deprecated: use fn.sharding.{name} (fn.parallel is "
                      f"the branch combinator)", DeprecationWarning, stacklevel=2)
        return getattr(sharding, name)

    def __repr__(self):
        return "<combinator funcnet.parallel (= funcnet.combinators.parallel)>"


parallel = _Parallel()
