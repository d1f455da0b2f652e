"""Process-level speed settings: funcnet's XLA CPU flags and JAX's persistent compilation cache.

XLA reads `XLA_FLAGS` once, when JAX starts its first backend (not at `import jax`), so
`apply_xla_defaults()` works any time before the first array or compiled call. It never
overrides a user's own `XLA_FLAGS`, and `FUNCNET_XLA_DEFAULTS=0` turns it off. The flag
choice and its measurement are in benchmarks/investigations/which-xla-cpu-flags-help.md (the
current figures: benchmarks/RESULTS.md, "XLA CPU flag map") and benchmarks/xla_flags.py.

The compilation cache keeps every compiled program on disk (JAX's own cache, minimum
compile time 0, so the many small programs of a run are kept too), so a second run of the
same script skips XLA. It is trusted like any code: keep it in a folder only you can write.
Nothing imports JAX here at module level, so the `funcnet` command can call these first.
"""
from __future__ import annotations

import os
import sys
import warnings

__all__ = ["DEFAULT_XLA_FLAGS", "apply_xla_defaults", "backend_started", "default_cache_dir",
           "enable_compilation_cache", "setup_for_command", "ynn_fusions_off"]

# YNNPACK fusions off: XLA's own emitters ran LeNet's conv step faster on the measured CPU
# (benchmarks/investigations/which-xla-cpu-flags-help.md).
DEFAULT_XLA_FLAGS = "--xla_cpu_experimental_ynn_fusion_type="
# The jaxlib series the flag was measured on. XLA aborts the process on a flag it does not
# know, and experimental flags come and go between releases, so other versions get XLA's
# own defaults until they are measured (benchmarks/xla_flags.py).
MEASURED_JAXLIB = ("0.10.",)


def _jaxlib_measured() -> bool:
    """Whether the installed jaxlib is one whose flags funcnet measured (read from the
    package metadata, without importing JAX)."""
    from importlib import metadata
    try:
        return metadata.version("jaxlib").startswith(MEASURED_JAXLIB)
    except metadata.PackageNotFoundError:
        return False


def backend_started() -> bool:
    """Whether JAX has already created a backend (after which XLA_FLAGS is ignored)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
        return bool(getattr(xla_bridge, "_backends", {}))
    except Exception:  # a JAX without that private name: assume started, change nothing
        return True


def apply_xla_defaults(flags: str = DEFAULT_XLA_FLAGS) -> bool:
    """Set XLA_FLAGS to funcnet's CPU defaults unless the user set XLA_FLAGS (even to ""),
    FUNCNET_XLA_DEFAULTS=0, JAX's backend already started, or the installed jaxlib is not
    one the flags were measured on (`MEASURED_JAXLIB`). True when it set them.

    Returns that bool; it never raises (a flag it cannot set is left alone). Call it before
    the first JAX computation.
    """
    if os.environ.get("FUNCNET_XLA_DEFAULTS", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if "XLA_FLAGS" in os.environ or backend_started() or not _jaxlib_measured():
        return False
    os.environ["XLA_FLAGS"] = flags
    return True


def ynn_fusions_off() -> bool:
    """Whether XLA_FLAGS turns YNNPACK's fusions off (funcnet's flag, or the user's own):
    the last `--xla_cpu_experimental_ynn_fusion_type=` in it has an empty list. Read when a
    program is traced, to pick the convolution arrangement measured fastest under it
    (`_cpu_conv`); XLA itself read the variable when the backend started."""
    name = "--xla_cpu_experimental_ynn_fusion_type="
    values = [t[len(name):] for t in os.environ.get("XLA_FLAGS", "").split() if t.startswith(name)]
    return bool(values) and values[-1].strip("\"'") == ""


def default_cache_dir() -> str:
    """$XDG_CACHE_HOME/funcnet/jax, or ~/.cache/funcnet/jax (the XDG base-directory default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "funcnet", "jax")


def enable_compilation_cache(path: str | os.PathLike | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache in `path` (default `default_cache_dir()`),
    keeping every compiled program (minimum compile time 0). Returns the folder, or None
    (with a warning) when it cannot be created or written: the run then just compiles.

    JAX itself turns a corrupt entry or a failed write into a warning and a recompile, so a
    broken cache costs time, never a run. FUNCNET_NO_CACHE=1 makes this a no-op.

    It never raises: every failure is the warning and None.
    """
    if os.environ.get("FUNCNET_NO_CACHE", "").strip().lower() in ("1", "true", "yes", "on"):
        return None
    path = os.path.abspath(os.fspath(path if path is not None else default_cache_dir()))
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        writable = os.access(path, os.W_OK | os.X_OK)
    except OSError as e:
        writable, why = False, str(e)
    else:
        why = "not writable"
    if not writable:
        warnings.warn(f"funcnet: compilation cache disabled: {path}: {why}", RuntimeWarning,
                      stacklevel=2)
        return None
    import jax
    from jax._src import compilation_cache as cc
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # keep small entries too
    cc.reset_cache()  # JAX decides once per process whether to use a cache; decide again
    return path


def setup_for_command(no_cache: bool = False) -> None:
    """What the `funcnet` command and experiments/ do first: funcnet's XLA flags (see
    `apply_xla_defaults`), then the compilation cache in `default_cache_dir()` unless
    `no_cache` or a cache folder is already configured (JAX_COMPILATION_CACHE_DIR, or
    `jax.config`), which is then left as it is."""
    apply_xla_defaults()
    if no_cache:
        return
    import jax
    if jax.config.jax_compilation_cache_dir:  # set by JAX_COMPILATION_CACHE_DIR or the user
        return
    enable_compilation_cache()
