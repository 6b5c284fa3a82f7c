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
from jax.experimental import mesh_utils
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


def _fill(shape: Sequence[int], n: int, what: str) -> list[int]:
  """`shape` with its one -1 entry (if any) set so that the product is n."""
  shape = list(shape)
  if len(shape) != 3:
    raise ValueError(f"{what} must have 3 entries (data, fsdp, tensor), got {shape}")
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"{what} {shape}: entries are positive, at most one may be -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if n % known:
      raise ValueError(f"{what} {shape} does not divide {n} devices")
    shape[shape.index(-1)] = n // known
  if math.prod(shape) != n:
    raise ValueError(f"{what} {shape} needs {math.prod(shape)} devices, {n} are available")
  return shape


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None,
              dcn_shape: Sequence[int] = (1, 1, 1)) -> Mesh:
  """Mesh over (data, fsdp, tensor); one entry may be -1 to take the remaining devices.

  With a `dcn_shape` other than (1, 1, 1) (multi-slice TPU, or GPU hosts joined by a slower
  network), `shape` is the mesh inside one slice and `dcn_shape` how many slices each axis
  spans; the mesh is their product, built by `mesh_utils.create_hybrid_device_mesh` so that
  only the `dcn_shape` axes cross the slow network. Slices are TPU `slice_index` where
  devices have one, else processes.
  """
  devices = list(jax.devices() if devices is None else devices)
  dcn = list(dcn_shape)
  if len(dcn) != 3 or any(s < 1 for s in dcn):
    raise ValueError(f"mesh dcn_shape {dcn}: 3 positive entries (data, fsdp, tensor)")
  slices = math.prod(dcn)
  if slices == 1:
    return Mesh(np.asarray(devices).reshape(_fill(shape, len(devices), "mesh shape")),
                MESH_AXES)
  by_slice = hasattr(devices[0], "slice_index")
  granules = len({d.slice_index if by_slice else d.process_index for d in devices})
  if granules != slices:
    raise ValueError(f"mesh dcn_shape {dcn} asks for {slices} slices; the devices form "
                     f"{granules} ({'slice_index' if by_slice else 'processes'})")
  ici = _fill(shape, len(devices) // slices, "mesh shape (per slice)")
  grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices,
                                              process_is_granule=not by_slice)
  return Mesh(grid, MESH_AXES)


def check_process_layout(mesh: Mesh, rows: int) -> None:
  """Raise unless each process feeds whole rows: only batch axes may cross processes.

  Every process loads its own rows (`jax.make_array_from_process_local_data`); an axis that
  is not a batch axis but spans processes would make those rows replicas of each other, and
  the step would train on a silently smaller global batch. The batch axes must also divide
  the rows, and the processes split them evenly.
  """
  owner = np.vectorize(lambda d: d.process_index)(mesh.devices)
  for axis, name in enumerate(mesh.axis_names):
    if name not in BATCH_AXES and not np.all(owner == np.take(owner, [0], axis=axis)):
      raise ValueError(f"mesh {dict(mesh.shape)}: the {name!r} axis spans several processes; "
                       f"only the batch axes {BATCH_AXES} may cross processes (hosts)")
  shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
  processes = len(np.unique(owner))
  if rows % shards or rows % processes:
    raise ValueError(f"data.rows={rows} must be divisible by the batch axes of mesh "
                     f"{dict(mesh.shape)} ({shards} shards) and by the {processes} processes")


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
