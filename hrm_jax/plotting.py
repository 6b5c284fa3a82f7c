"""Line plots of logged or measured values to a PNG, written atomically (matplotlib, Agg):
training curves (experiments/plot.py) and score against recursion depth (experiments/eval.py);
`write_png` is the one way a figure reaches disk (ablations and benchmarks use it too)."""

from __future__ import annotations

from typing import Optional

from matplotlib.figure import Figure

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hrm_jax import atomic  # noqa: E402


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


def write_png(fig: Figure, out: str, dpi: int = 100) -> None:
  """Save `fig` to `out` atomically (umask modes) and close it, even when saving fails."""
  try:
    with atomic.file(out, "wb") as f:
      fig.savefig(f, format="png", dpi=dpi)
  finally:
    plt.close(fig)
