"""funcnet/_xla_env.py: the XLA flag default and the persistent compilation cache.

Everything that touches JAX's process-wide settings runs in a child process, so this test
process's own configuration is never changed.
"""
import json
import os
import subprocess
import sys

import pytest

from funcnet import _xla_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# In the child: enable the cache in argv[1], compile one small program, report what happened.
CHILD = r"""
import json, os, sys, warnings
import funcnet as fn
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    where = fn.enable_compilation_cache(sys.argv[1])
    import jax, jax.numpy as jnp
    y = jax.jit(lambda x: jnp.tanh(x) * 3.0 + 1.0)(jnp.arange(4.0))
print("JSON" + json.dumps({"where": where, "y": [float(v) for v in y],
                           "warnings": [str(w.message) for w in caught],
                           "xla_flags": os.environ.get("XLA_FLAGS")}))
"""


def child(path, **env):
    full = {k: v for k, v in os.environ.items()
            if k not in ("JAX_COMPILATION_CACHE_DIR", "FUNCNET_NO_CACHE", "XLA_FLAGS")}
    full.update(JAX_PLATFORMS="cpu", **env)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True,
                          text=True, timeout=180, env=full, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("JSON")][0]
    return json.loads(line[4:])


def entries(path):
    return sorted(p for p in os.listdir(path) if not p.startswith("."))


def test_cache_is_written_then_reused_and_survives_corruption(tmp_path):
    cache = tmp_path / "cache"
    first = child(cache)
    assert first["where"] == str(cache) and first["y"][1] == pytest.approx(3 * 0.7615942 + 1)
    written = entries(cache)
    assert written, "a tiny program is cached too (minimum compile time 0)"
    again = child(cache)
    assert again["y"] == first["y"] and entries(cache) == written  # read, not rewritten
    for name in written:  # garbage in every entry: JAX warns and recompiles, the run goes on
        p = cache / name
        if p.is_file():
            p.write_bytes(b"not an executable")
    broken = child(cache)
    assert broken["y"] == first["y"]


def test_unwritable_cache_falls_back_to_compiling(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    out = child(blocker / "cache")
    assert out["where"] is None and out["y"][0] == pytest.approx(1.0)
    assert any("compilation cache disabled" in w for w in out["warnings"])


def test_no_cache_env_turns_it_off(tmp_path):
    out = child(tmp_path / "cache", FUNCNET_NO_CACHE="1")
    assert out["where"] is None and not (tmp_path / "cache").exists()


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _xla_env.default_cache_dir() == os.path.join(str(tmp_path), "funcnet", "jax")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _xla_env.default_cache_dir() == os.path.join(str(tmp_path), "home", ".cache",
                                                        "funcnet", "jax")


def test_xla_defaults_respect_the_user(monkeypatch):
    monkeypatch.setattr(_xla_env, "backend_started", lambda: False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setenv("FUNCNET_XLA_DEFAULTS", "0")
    assert not _xla_env.apply_xla_defaults() and "XLA_FLAGS" not in os.environ
    monkeypatch.delenv("FUNCNET_XLA_DEFAULTS")
    assert _xla_env.apply_xla_defaults() and os.environ["XLA_FLAGS"] == _xla_env.DEFAULT_XLA_FLAGS
    monkeypatch.setenv("XLA_FLAGS", "")  # set, even empty: the user's choice stands
    assert not _xla_env.apply_xla_defaults() and os.environ["XLA_FLAGS"] == ""
    monkeypatch.delenv("XLA_FLAGS")
    monkeypatch.setattr(_xla_env, "backend_started", lambda: True)  # too late: XLA read them
    assert not _xla_env.apply_xla_defaults() and "XLA_FLAGS" not in os.environ


def test_xla_defaults_only_for_the_measured_jaxlib(monkeypatch):
    """An unknown flag aborts XLA: a jaxlib series nobody measured keeps XLA's defaults."""
    from importlib import metadata
    monkeypatch.setattr(_xla_env, "backend_started", lambda: False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv("FUNCNET_XLA_DEFAULTS", raising=False)
    assert metadata.version("jaxlib").startswith(_xla_env.MEASURED_JAXLIB)
    monkeypatch.setattr(metadata, "version", lambda name: "0.99.0")
    assert not _xla_env.apply_xla_defaults() and "XLA_FLAGS" not in os.environ


@pytest.mark.parametrize("flags, off", [
    (None, False), ("", False), ("--xla_cpu_experimental_ynn_fusion_type=", True),
    ("--xla_cpu_use_xnnpack=false --xla_cpu_experimental_ynn_fusion_type=''", True),
    ("--xla_cpu_experimental_ynn_fusion_type=dot,eltwise", False),
    # the last one wins, as in XLA's own parsing
    ("--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_experimental_ynn_fusion_type=dot", False),
    ("--xla_cpu_experimental_ynn_fusion_type=dot --xla_cpu_experimental_ynn_fusion_type=", True)])
def test_ynn_fusions_off_reads_the_last_setting(monkeypatch, flags, off):
    if flags is None:
        monkeypatch.delenv("XLA_FLAGS", raising=False)
    else:
        monkeypatch.setenv("XLA_FLAGS", flags)
    assert _xla_env.ynn_fusions_off() is off
