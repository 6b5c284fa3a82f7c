"""Device mesh and logical-axis sharding rules (the only place that knows about devices).

Model code names axes (vocab, embed, heads, head_dim, mlp, layers); a rule table maps them to
mesh axes (data, fsdp, tensor), as MaxText does. The default is FSDP: parameters and
optimizer state are split over `fsdp` along `embed`; heads, mlp and vocab go to `tensor`.
Code that must place work by hand (the Pallas attention kernels, which XLA cannot
partition) reads the mesh from JAX's context, set by `traced_in_mesh` around a jitted step,
and takes its specs from `attention_specs`.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical axis -> mesh axis (or None = replicated).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
)


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Mesh over (data, fsdp, tensor); one entry may be -1 to take the remaining devices."""
  devices = list(jax.devices() if devices is None else devices)
  shape = list(shape)
  if len(shape) != 3:
    raise ValueError(f"mesh shape must have 3 entries (data, fsdp, tensor), got {shape}")
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh shape {shape}: entries are positive, at most one may be -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f"mesh shape {shape} does not divide {len(devices)} devices")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ValueError(f"mesh shape {shape} needs {math.prod(shape)} devices, "
                     f"{len(devices)} are available")
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def _fit(spec: P, shape: Sequence[int], mesh: Mesh, name: str) -> P:
  """Replicate any dimension that its mesh axes do not divide (small models, big meshes)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = math.prod(mesh.shape[a] for a in names)
    if names and dim % size:
      logging.info("sharding: %s dim %d not divisible by %s=%d; replicated", name, dim, names,
                   size)
      axes = None
    out.append(axes)
  return P(*out)


def param_shardings(abstract_boxed: Any, mesh: Mesh,
                    rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> Any:
  """NamedShardings for a (boxed, abstract) variable tree; unboxed structure."""
  specs = nn.get_partition_spec(abstract_boxed)
  specs = nn.logical_to_mesh(specs, rules)
  values = nn.unbox(abstract_boxed)

  def to_sharding(path, spec, value):
    spec = spec if isinstance(spec, P) else P()
    return NamedSharding(mesh, _fit(spec, value.shape, mesh, jax.tree_util.keystr(path)))

  return jax.tree_util.tree_map_with_path(
      to_sharding, specs, values, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows of a [rows, seq] batch split over data x fsdp."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def traced_in_mesh(fn: Callable, mesh: Mesh) -> Callable:
  """`fn` with `mesh` as JAX's abstract mesh while it is traced: put it inside `jax.jit`, so
  model code finds the mesh (`jax.sharding.get_abstract_mesh()`) without being handed devices,
  and every trace of the jitted function (calls, `.lower`) sees the same mesh."""

  @functools.wraps(fn)
  def traced(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args, **kwargs)

  return traced


def attention_specs(mesh: Mesh | AbstractMesh, q_shape: Sequence[int],
                    rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> tuple[P, P]:
  """shard_map specs of q/k/v [batch, seq, heads, head_dim] and of per-row [batch, seq] mask
  inputs: rows over the batch axes (data x fsdp), heads over the `heads` rule's axis; either
  replicated where its axes do not divide it (a micro-batch smaller than the mesh, few heads).
  """
  if set(mesh.axis_names) != set(MESH_AXES):
    raise ValueError(f"the mesh in context has axes {mesh.axis_names}; the attention kernels "
                     f"expect {MESH_AXES} (hrm_jax.sharding.make_mesh)")
  heads_axis = dict(rules).get("heads")
  qkv = _fit(P(BATCH_AXES, None, heads_axis, None), q_shape, mesh, "attention q/k/v")
  return qkv, P(qkv[0], None)
