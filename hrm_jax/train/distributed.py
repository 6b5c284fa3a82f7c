"""Joining a multi-process (multi-host) JAX job: one process per host, all running train.py.

`jax.distributed.initialize` connects the processes through a coordinator (process 0's
host:port), makes every host's devices visible to all, and starts the preemption service
the training loop uses. On CPU the collectives between processes need an implementation;
gloo ships with jaxlib, so it is selected here (tests and laptops run several CPU processes
on localhost; `JAX_NUM_CPU_DEVICES` sets the devices per process, as JAX reads it).
"""

from __future__ import annotations

from typing import Optional

import jax
from jax.experimental import multihost_utils


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, auto: bool = False) -> bool:
  """Join the job given explicitly (all three of address, count, id) or, with `auto`,
  detected by JAX from the cluster (SLURM, Open MPI, Kubernetes, Cloud TPU). Returns whether
  the process joined a job; nothing given and not `auto` is a single-process run."""
  given = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
           "--process_id": process_id}
  missing = [k for k, v in given.items() if v is None]
  if len(missing) not in (0, len(given)):
    raise ValueError(f"{', '.join(k for k in given if k not in missing)} given without "
                     f"{', '.join(missing)}: pass all three, or none to let JAX detect the "
                     "cluster (--distributed)")
  if missing and not auto:
    return False
  if not missing:
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id={process_id} must be in [0, --num_processes="
                       f"{num_processes})")
    if ":" not in coordinator_address:
      raise ValueError(f"--coordinator_address={coordinator_address!r}: expected HOST:PORT")
  # Only read by the CPU backend; accelerator collectives are the platform's own.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  return True


def gather_to_host(tree):
  """Every leaf as a whole NumPy array on every process (weights sharded across hosts
  included); all processes must call it together."""
  return multihost_utils.process_allgather(tree, tiled=True)
