"""Test setup: 8 host devices for sharding tests (in the test processes only), fast XLA
compiles (tiny shapes), float32, and one persistent compilation cache for the whole session."""

import atexit
import os
import shutil
import tempfile

_user_flags = os.environ.get("XLA_FLAGS")
_flags = _user_flags or ""
if "xla_backend_optimization_level" not in _flags:
  _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compile-only GPU devices (tests/aot_test.py) need no cuDNN; skip the plugin's version check.
os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")

# Many tests (and the experiments/*.py subprocesses they start, which inherit this
# environment) compile the same tiny programs: a compilation cache shared by the xdist
# workers and those subprocesses compiles each once. It lives in a fresh directory per
# session, made by the process pytest started (xdist workers inherit it) and removed at its
# exit, so no user cache is read or written.
if "PYTEST_XDIST_WORKER" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="hrm_jax_test_jax_cache_")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402  (after the environment above, which JAX reads at import)

# These settings are for the test processes only: the experiments/*.py scripts the tests
# start get the user's environment back, so they run as a user runs them, on one CPU device
# with optimised code. A training step spread over 8 fake devices on this 2-core machine ran
# 4-6x slower, and a whole script compiled at level 0 ran its steps about 2x slower. A test
# whose script must match an in-process run gives it `helpers.as_test_process(env)`.
if "xla_force_host_platform_device_count" not in _flags:
  jax.config.update("jax_num_cpu_devices", 8)
jax.devices()  # XLA reads XLA_FLAGS here, once per process
if _user_flags is None:
  os.environ.pop("XLA_FLAGS")
else:
  os.environ["XLA_FLAGS"] = _user_flags
