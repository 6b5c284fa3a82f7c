"""Training: state, the jitted step, checkpoints, metrics and the loop (each imported on first
use: `hrm_jax.train.loop`)."""

from hrm_jax import lazy

SUBMODULES, __getattr__, __dir__ = lazy.submodules(__name__, __path__, globals())
