"""Shared test settings: hypothesis profiles, the --slow option, and the session's JAX setup.

Default profile: 20 examples per property (the curated configs, new seeds). `pytest --slow` (or
FUNCNET_SLOW=1) draws 500. Nothing is skipped either way.

XLA's flags: XLA's own defaults, what `import funcnet` gives a library user (almost every test
calls the library as such a user does), except that the suite's programs compile more cheaply
(`_suite_xla_flags`), in this process and in the processes the tests start.
FUNCNET_XLA_DEFAULTS=0 keeps funcnet's CPU flags (the `funcnet` command's) from being set,
including by `import experiments` at collection. Their setting and opt-outs are tested in
test_xla_env.py; to run the whole suite under them, set XLA_FLAGS yourself (the user's
XLA_FLAGS wins everywhere). Until session 11 the suite ran under the command's flags: XLA's
own emitters, which they select, compile ~15 % slower (6 min 54 s against 5 min 57 s for the
same 494 tests, benchmarks/investigations/where-does-the-test-suite-spend-its-time.md).

Before any test imports JAX: one persistent compilation cache for the whole session, shared
by the pytest-xdist workers and the subprocesses the tests start, so a program compiled by
one of them is read by the others. It lives in a fresh temporary folder (removed at the
end), so no run depends on an earlier one; FUNCNET_TEST_CACHE=DIR keeps it in DIR instead,
FUNCNET_TEST_CACHE=0 turns it off.
"""
import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings

from tests.suite_xla import SUITE_XLA_FLAGS

settings.register_profile("default", max_examples=20, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("slow", max_examples=500, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])

_OWNED_CACHE = []  # the temporary folder this (controller) process created


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits, as fn.data.load gives them: ((x, y), (x_test, y_test))."""
    import funcnet as fn
    return fn.data.load("digits")


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="500 hypothesis examples per property instead of 20")


def _session_cache():
    """Set JAX's cache variables once, in the first process (xdist workers inherit them)."""
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:  # the controller's, or the user's own
        return
    want = os.environ.get("FUNCNET_TEST_CACHE", "")
    if want == "0":
        return
    if want:
        path = want
    else:
        path = tempfile.mkdtemp(prefix="funcnet-test-jax-cache-")
        _OWNED_CACHE.append(path)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    # JAX read its environment when this process imported it (importing funcnet above did):
    # tell this process too, or a run without xdist would use the user's own cache
    import jax
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def _suite_xla_flags():
    """tests/suite_xla.py's flags (LLVM at -O0, XLA's older elemental emitters) for the
    programs the tests compile, unless the user set XLA_FLAGS (theirs win) or
    FUNCNET_TEST_XLA_OPT=default. Most of the suite's time is XLA compiling (and JAX
    lowering) ~7,000 small programs; both settings keep the HLO (fusions included) and make
    each kernel cheaper to compile: 10 min 07 s (XLA's defaults) -> 7 min 11 s for the 820
    tests on 2 cores (-O0 alone: 8 min 54 s). Results move in the last bits (one float64
    comparison measured 1.16e-12 instead of below 1e-12); the tests that claim bit-equal
    programs run under XLA's fusion emitters in a process of their own
    (`with_xla_fusion_emitters`). `FUNCNET_TEST_XLA_OPT=default python -m pytest` runs the
    whole suite as users compile."""
    if "XLA_FLAGS" in os.environ or os.environ.get("FUNCNET_TEST_XLA_OPT") == "default":
        return
    os.environ["XLA_FLAGS"] = SUITE_XLA_FLAGS


def pytest_configure(config):
    slow = config.getoption("--slow") or os.environ.get("FUNCNET_SLOW") == "1"
    settings.load_profile("slow" if slow else "default")
    os.environ.setdefault("FUNCNET_XLA_DEFAULTS", "0")  # before anything imports experiments
    _suite_xla_flags()
    _session_cache()


def pytest_unconfigure(config):
    for path in _OWNED_CACHE:
        shutil.rmtree(path, ignore_errors=True)


# The longest tests (end-to-end studies, several processes, competitor runs: 10-45 s each on
# 2 cores) start first, so the xdist workers do not end with one of them running alone.
_LONG_FIRST = ("tests/test_experiments.py", "tests/test_distributed.py", "tests/test_benchmarks.py",
               "tests/test_gradcheck.py", "tests/test_parallel.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_LONG_FIRST)}
    # sorted() is stable: the order inside each file, and of every other file, is kept
    items[:] = sorted(items, key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
