"""Parameter counting."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def count_params(params: Any) -> int:
  """Number of scalars in a pytree of arrays, ShapeDtypeStructs or boxed (partitioned) leaves."""
  leaves = jax.tree_util.tree_leaves(params)
  return int(sum(int(np.prod(leaf.shape)) for leaf in leaves))
