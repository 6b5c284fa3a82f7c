"""Line plots of logged or measured values to a PNG, written atomically (matplotlib, Agg):
training curves (experiments/plot.py) and score against recursion depth (experiments/eval.py);
`write_png` is the one way a figure reaches disk (ablations and benchmarks use it too), and
`check_png_path` what a script checks before its work: a PNG path never replaces a user's
file."""

from __future__ import annotations

import os
from typing import Optional

from matplotlib.figure import Figure

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hrm_jax import atomic, storage  # noqa: E402


def plot(runs: dict[str, dict[int, dict]], metrics: list[str], out: str,
         xlabel: str = "step", marker: Optional[str] = None) -> None:
  """Draw one subplot per metric, one line per run (x: the keys of its rows, y: each row's
  metric), and write `out` atomically."""
  present = [m for m in metrics if any(m in r for rows in runs.values() for r in rows.values())]
  if not present:
    raise ValueError(f"none of the metrics {metrics} is in the logged rows")
  fig, axes = plt.subplots(len(present), 1, figsize=(7, 2.6 * len(present)), sharex=True,
                           squeeze=False)
  for ax, metric in zip(axes[:, 0], present):
    for name, rows in runs.items():
      points = [(s, r[metric]) for s, r in rows.items() if isinstance(r.get(metric), (int, float))]
      if points:
        ax.plot(*zip(*points), label=name, marker=marker)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
  axes[0, 0].legend(loc="best", fontsize="small")
  axes[-1, 0].set_xlabel(xlabel)
  fig.tight_layout()
  write_png(fig, out, dpi=100)


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_png_path(path: str, flag: str, replace: bool) -> None:
  """Before any work: `path` can be written, and what it would replace is a PNG image (never
  a run's metrics.jsonl or another file of the user's) that `replace` allows to go."""
  atomic.check_writable(path, flag)
  target = storage.path(path)
  if target.is_dir():
    raise IsADirectoryError(f"{flag}={path} is a directory; expected a .png file path")
  if not (target.exists() or os.path.islink(path)):
    return
  try:
    with target.open("rb") as f:
      is_png = f.read(len(PNG_MAGIC)) == PNG_MAGIC
  except OSError:
    is_png = False
  if not is_png:
    raise FileExistsError(f"{flag}={path} exists and is not a PNG image; refusing to replace "
                          f"it (choose another {flag})")
  if not replace:
    raise FileExistsError(f"{flag}={path} exists; pass --overwrite to replace it")


def write_png(fig: Figure, out: str, dpi: int = 100) -> None:
  """Save `fig` to `out` atomically (umask modes) and close it, even when saving fails."""
  try:
    with atomic.file(out, "wb") as f:
      fig.savefig(f, format="png", dpi=dpi)
  finally:
    plt.close(fig)
