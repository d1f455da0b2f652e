"""The suite's XLA compile settings (conftest.py sets them unless the user set XLA_FLAGS),
the same plus a device count for the processes tests start, and a way out of them for the
tests that compare bits. Imports nothing heavy: conftest.py
reads it before JAX starts."""
import functools
import inspect
import os
import subprocess
import sys

# LLVM at -O0, and XLA's older elemental emitters instead of its MLIR fusion emitters, which
# take several times longer to compile each fused kernel (the resnet gradient check's
# program: 4.5 -> 2.0 s). Same HLO, same fusions; the arithmetic inside a kernel may round
# differently in the last bit.
LLVM_O0 = "--xla_backend_optimization_level=0"
SUITE_XLA_FLAGS = f"{LLVM_O0} --xla_cpu_use_fusion_emitters=false"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def device_flags(devices):
    """The run's XLA_FLAGS (the suite's, or the user's) plus `devices` CPU devices."""
    return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()


def with_xla_fusion_emitters(test):
    """`test` (no arguments), run in a process of its own under XLA's fusion emitters (its
    default, what users' programs get) when the suite's XLA_FLAGS are set; LLVM stays at -O0
    (the tests using this pass under it and under XLA's defaults alike). For claims that two
    programs give the same bits: they are made for the code those emitters generate and need
    not hold under the older ones (there, 14 of 450 elements of a batched normal draw differ
    from the per-call draw in the last bit)."""
    @functools.wraps(test)
    def run():
        if os.environ.get("XLA_FLAGS") != SUITE_XLA_FLAGS:
            return test()
        env = dict(os.environ, XLA_FLAGS=LLVM_O0)
        code = ("import importlib.util as u; s = u.spec_from_file_location('t', "
                f"{inspect.getfile(test)!r}); m = u.module_from_spec(s); s.loader.exec_module(m); "
                f"m.{test.__name__}.__wrapped__()")
        proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return run
