"""Forward + backward time and compiled memory of each attention_impl over row lengths.

    python benchmarks/attention.py [--seq_lens=512,1024,2048,4096,8192 --heads=4
        --head_dim=64 --batch=1 --impls=dense,chunked,pallas_gpu,pallas_tpu --out=attention.png]

Rows are packed like SFT data: examples of uniform random length in [16, --max_example]
with a random prompt share, then padding (the table's last line: the share of tiles the
blockwise kernels visit for that packing; the rest are skipped). Each variant is the jitted
forward and backward (wrt q, k and v) of `attention.attend`, mask preparation included
(`hrm_jax.benchmarking.attention_fwd_bwd`, which benchmarks/device_check.py times too);
time is the median of --repeats runs after compilation (the impls' runs alternate), memory
the compiled program's temp bytes (XLA's memory_analysis). Pallas kernels off their backend only run interpreted, which measures
nothing: they are listed as "n/a on <backend>". Variants whose temp memory exceeds
--max_temp_gib are compiled but not run. Prints a markdown table and writes a PNG.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from absl import flags

from hrm_jax import attention, benchmarking, cli, plotting
from hrm_jax.kernels import ranges as ranges_lib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

_SEQ_LENS = flags.DEFINE_list("seq_lens", ["512", "1024", "2048", "4096", "8192"],
                              "row lengths")
_HEADS = flags.DEFINE_integer("heads", 4, "attention heads")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 64, "head dim")
_BATCH = flags.DEFINE_integer("batch", 1, "rows")
_IMPLS = flags.DEFINE_list("impls", ["dense", "chunked", "pallas_gpu", "pallas_tpu"],
                           "attention_impls to measure")
_CHUNK = flags.DEFINE_integer("chunk", 512, "attention_chunk (tile rows)")
_MAX_EXAMPLE = flags.DEFINE_integer("max_example", 2048, "longest packed example")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed runs per variant")
_MAX_TEMP = flags.DEFINE_float("max_temp_gib", 6.0, "skip running variants above this")
_OUT = flags.DEFINE_string("out", "attention.png", "plot path")


def visited_tiles(seq: int) -> float:
  """Share of the [S/chunk]^2 tiles the blockwise kernels visit for this seq's packing."""
  seg, prefix = benchmarking.packed_rows(np.random.default_rng(seq), _BATCH.value, seq,
                                         _MAX_EXAMPLE.value)
  r, padded = ranges_lib.pad_rows(ranges_lib.prefix_lm_ranges(jnp.asarray(seg),
                                                              jnp.asarray(prefix)),
                                  min(_CHUNK.value, seq))
  block = min(_CHUNK.value, seq)
  lo, hi = ranges_lib.block_bounds(r.k_start, r.k_end, block, block)
  return float(jnp.sum(hi - lo)) / (lo.size * (padded // block))


def compile_variant(impl: str, seq: int):
  """(compiled fwd+bwd, its args, temp bytes) of one impl on this seq's packing."""
  rng = np.random.default_rng(seq)  # the same packing and inputs for every impl
  seg, prefix = benchmarking.packed_rows(rng, _BATCH.value, seq, _MAX_EXAMPLE.value)
  q, k, v, w = benchmarking.random_qkv(rng, (_BATCH.value, seq, _HEADS.value, _HEAD_DIM.value),
                                       jnp.float32)
  args = (q, k, v, w, jnp.asarray(seg), jnp.asarray(prefix))
  compiled = benchmarking.attention_fwd_bwd(impl, _CHUNK.value).lower(*args).compile()
  return compiled, args, compiled.memory_analysis().temp_size_in_bytes


def measure(impls: list[str], seq: int) -> dict[str, tuple[float | None, int]]:
  """impl -> (median fwd+bwd seconds or None when not run, compiled temp bytes)."""
  variants = {impl: compile_variant(impl, seq) for impl in impls}
  runnable = {i: (lambda c=c, a=a: c(*a)) for i, (c, a, temp) in variants.items()
              if temp <= _MAX_TEMP.value * 2**30}
  times = benchmarking.time_alternating(runnable, _REPEATS.value)
  return {impl: (times.get(impl), temp) for impl, (_, _, temp) in variants.items()}


def main(argv: list[str]) -> None:
  del argv
  plotting.check_png_path(_OUT.value, "--out", replace=True)  # its own plot, not a user's file
  backend = jax.default_backend()
  seqs = [int(s) for s in _SEQ_LENS.value]
  results: dict[str, dict[int, tuple[float | None, int]]] = {}
  for impl in _IMPLS.value:
    attention.resolve_impl(impl, seqs[0])  # a clear error for an unknown name
    results[impl] = {}
  runnable = [i for i in _IMPLS.value
              if not i.startswith("pallas_") or i == f"pallas_{backend}"]
  for seq in seqs:
    print(f"  seq {seq}: {', '.join(runnable)} ...", flush=True)
    for impl, result in measure(runnable, seq).items():
      results[impl][seq] = result

  print(f"\nbackend {backend}: batch {_BATCH.value}, heads {_HEADS.value}, head_dim "
        f"{_HEAD_DIM.value}, chunk {_CHUNK.value}, float32, forward + backward wrt q, k, v\n")
  print("| impl | " + " | ".join(f"S={s}" for s in seqs) + " |")
  print("|---|" + "---|" * len(seqs))
  for impl, row in results.items():
    cells = []
    for s in seqs:
      if s not in row:
        cells.append(f"n/a on {backend}")
        continue
      t, temp = row[s]
      ms = "not run" if t is None else f"{t * 1e3:.1f} ms"
      cells.append(f"{ms}, {temp / 2**20:.0f} MiB")
    print(f"| {impl} | " + " | ".join(cells) + " |")
  print("| tiles visited | " + " | ".join(f"{visited_tiles(s):.0%}" for s in seqs) + " |")

  fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
  for impl, row in results.items():
    timed = [(s, t) for s, (t, _) in sorted(row.items()) if t is not None]
    if timed:
      ax_t.plot(*zip(*[(s, t * 1e3) for s, t in timed]), marker="o", label=impl)
    if row:
      ax_m.plot(*zip(*[(s, m / 2**20) for s, (_, m) in sorted(row.items())]), marker="o",
                label=impl)
  for ax, label in ((ax_t, "forward + backward ms"), (ax_m, "compiled temp MiB")):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("row length")
    ax.set_ylabel(label)
    ax.legend()
  fig.suptitle(f"PrefixLM attention on {backend} (batch {_BATCH.value}, heads {_HEADS.value}, "
               f"head_dim {_HEAD_DIM.value})")
  fig.tight_layout()
  plotting.write_png(fig, _OUT.value)
  print(f"\nplot: {_OUT.value}")


if __name__ == "__main__":
  cli.run(main)
