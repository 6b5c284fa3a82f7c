"""Plot training curves from `<workdir>/metrics.jsonl` to a PNG (one subplot per metric).

    python experiments/plot.py --workdir=runs/demo                     # -> runs/demo/curves.png
    python experiments/plot.py --workdir=runs/a,runs/b --out=ab.png --metrics=loss,lr

metrics.jsonl is appended across resumes, so a step may appear twice; the last entry wins.
Several comma-separated workdirs are overlaid, labelled by directory name. The default output
(<first workdir>/curves.png) is redrawn on every run; an --out that exists is replaced only
with --overwrite, and only when it is a PNG image (never the run's metrics.jsonl or another
file of the user's).
"""

from __future__ import annotations

import os

from absl import app, flags

from hrm_jax import cli, jsonl, plotting, storage

# Not `required=True`: tests import this module beside other scripts, and absl checks
# required flags of every imported module on each parse.
flags.DEFINE_string("workdir", "", "Training workdir(s), comma-separated to overlay runs "
                    "(required).")
flags.DEFINE_string("out", None, "PNG to write (default: <first workdir>/curves.png).")
if "overwrite" not in flags.FLAGS:  # eval.py defines the same flag; tests import both
  flags.DEFINE_bool("overwrite", False, "Replace an existing --out PNG.")
flags.DEFINE_string("metrics", "loss,accuracy,exact_accuracy", "Comma-separated metric names.")

METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: str) -> dict[int, dict]:
  """{step: row} of a workdir's metrics.jsonl, keeping the last row of a repeated step."""
  path = storage.join(workdir, METRICS_FILE)
  if not storage.path(path).exists():
    raise FileNotFoundError(f"--workdir={workdir}: {path} does not exist (is it a training "
                            "workdir?)")
  rows: dict[int, dict] = {}
  local = storage.cached_copy(path) if storage.is_remote(path) else path
  for n, row in jsonl.read_objects(str(local)):
    if "step" not in row:
      raise ValueError(f"{path}:{n}: expected an object with 'step'")
    rows[int(row["step"])] = row
  if not rows:
    raise ValueError(f"{path} is empty: no logged steps to plot")
  return dict(sorted(rows.items()))


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  workdirs = [w for w in (f.workdir or "").split(",") if w]
  metrics = [m.strip() for m in f.metrics.split(",") if m.strip()]
  if not workdirs or not metrics:
    raise app.UsageError("--workdir and --metrics need at least one name each")
  out = f.out or storage.join(workdirs[0], "curves.png")
  # The default curves.png is redrawn on every run; an explicit --out only with --overwrite.
  plotting.check_png_path(out, "--out", replace=f.out is None or f.overwrite)
  try:
    runs = {}
    for w in workdirs:
      name = w.rstrip("/").rsplit("/", 1)[-1] if storage.is_remote(w) else \
          os.path.basename(os.path.normpath(w))
      runs[name if name not in runs else w] = read_metrics(w)
    plotting.plot(runs, metrics, out)
  except (FileNotFoundError, ValueError) as e:
    cli.fail(str(e))
  print(f"wrote {out} ({', '.join(metrics)}; {len(runs)} run(s))")


if __name__ == "__main__":
  cli.run(main)
