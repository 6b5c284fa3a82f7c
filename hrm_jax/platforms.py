"""Which JAX platform a script starts, so that start-up is quiet where no accelerator is.

The test and ahead-of-time requirements install libtpu and the CUDA PJRT plugin as
compilers (hrm_jax/train/aot.py). JAX initialises every installed plugin on first use, and
on a machine without that accelerator each logs a start-up failure (~30 lines of TPU and
cuDNN errors) before falling back to the CPU. As JAX itself does for an explicit
`JAX_PLATFORMS`, the scripts pin the platform, but only when the user chose none and the
machine has no accelerator device node: then `cpu`, so no plugin is probed. On a machine
with a GPU or TPU nothing is pinned and JAX picks the accelerator as usual. Compile-only
devices for other accelerators (`jax.experimental.topologies`) load their plugin directly and
do not depend on this setting. A backend without a device node here (Apple's jax-metal)
needs JAX_PLATFORMS set explicitly.
"""

from __future__ import annotations

import glob
import os

# Device nodes of the accelerators JAX has plugins for: NVIDIA (/dev/nvidiactl, /dev/nvidia0),
# AMD ROCm (/dev/kfd), Cloud TPU VMs (/dev/accel* up to v4, /dev/vfio/<n> from v5e).
_DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvidia[0-9]*", "/dev/kfd", "/dev/accel[0-9]*",
                 "/dev/vfio/[0-9]*")


def has_accelerator(patterns: tuple[str, ...] = _DEVICE_NODES) -> bool:
  return any(glob.glob(p) for p in patterns)


def select_default() -> str | None:
  """Pin `jax_platforms` to 'cpu' when neither JAX_PLATFORMS nor jax_platforms is set and no
  accelerator is present; returns what was pinned (None: JAX chooses). Call before anything
  initialises a backend."""
  import jax
  if os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms or has_accelerator():
    return None
  jax.config.update("jax_platforms", "cpu")
  return "cpu"
