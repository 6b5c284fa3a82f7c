"""Benchmark rows from local files or the Hugging Face hub, in each source data set's schema.

Local layout: `<data_dir>/<folder>/<split>.jsonl` or `.parquet` (one JSON object per line, or
a parquet table), with the column names of the data set it comes from (for example GSM8K's
`question`/`answer`). Without a data_dir, rows come from the hub through `datasets` (an
optional dependency, needed only then).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional, Sequence

from hrm_jax import errors, jsonl

EXTENSIONS = (".jsonl", ".parquet")


class EvalDataError(errors.UserError, ValueError):
  """Missing or malformed benchmark data; the message names the file, row and field."""


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a benchmark: `<data_dir>/<folder>/<file>.jsonl|.parquet` locally, or
  `datasets.load_dataset(hub_path, config, split=hub_split)` over `hub_configs` (rows of
  several configs are concatenated, e.g. MATH's subjects)."""
  file: str
  hub_path: str
  hub_configs: tuple[Optional[str], ...]
  hub_split: str

  @property
  def hub_name(self) -> str:
    configs = ",".join(c for c in self.hub_configs if c)
    return f"{self.hub_path}" + (f" ({configs})" if configs else "") + f" split {self.hub_split}"


def local_file(data_dir: str, folder: str, split: Split) -> Optional[str]:
  """The existing `<data_dir>/<folder>/<split.file>.{jsonl,parquet}`, or None."""
  for ext in EXTENSIONS:
    path = os.path.join(data_dir, folder, split.file + ext)
    if os.path.isfile(path):
      return path
  return None


def expected_path(data_dir: str, folder: str, split: Split) -> str:
  return os.path.join(data_dir, folder, split.file + ".jsonl|.parquet")


def read_file(path: str) -> list[dict[str, Any]]:
  """Rows of a JSONL or parquet file as dicts (parquet structs become dicts)."""
  return [row for _, row in read_labelled(path)]


def read_labelled(path: str) -> list[tuple[str, dict[str, Any]]]:
  """(where, row) of a JSONL or parquet file: `path:LINE` for JSONL, as its parse errors say
  (blank lines counted), `path: row N` (from 1) for parquet."""
  if path.endswith(".parquet"):
    import pyarrow.parquet as pq
    try:
      rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for a bad file
      raise EvalDataError(f"{path}: not a readable parquet file ({e})") from e
    return [(f"{path}: row {i}", row) for i, row in enumerate(rows, 1)]
  return [(f"{path}:{n}", row) for n, row in jsonl.read_objects(path, EvalDataError)]


def read_hub(split: Split) -> list[dict[str, Any]]:
  """Rows of `split` from the Hugging Face hub (needs `datasets` and network access, or its
  cache); any failure becomes one EvalDataError that says to pass --data_dir."""
  hint = ("pass --data_dir=DIR with <DIR>/<benchmark>/<split>.jsonl|.parquet files (layout "
          "in docs/evaluation.md) to evaluate offline")
  try:
    import datasets
  except ImportError as e:
    raise EvalDataError(f"reading {split.hub_name} from the hub needs `pip install datasets`; "
                        f"or {hint}") from e
  rows: list[dict[str, Any]] = []
  for config in split.hub_configs:
    try:
      rows.extend(datasets.load_dataset(split.hub_path, config, split=split.hub_split).to_list())
    except Exception as e:  # network, hub and cache errors come in many types
      raise EvalDataError(f"could not load {split.hub_name} from the Hugging Face hub "
                          f"({type(e).__name__}: {str(e)[:300]}); {hint}") from e
  return rows


def check_local(data_dir: str, needed: Sequence[tuple[str, str, Split, Sequence[str]]]) -> None:
  """One error listing every missing file: `needed` = (benchmark, folder, split, columns)."""
  if not os.path.isdir(data_dir):
    raise EvalDataError(f"--data_dir={data_dir} is not a directory")
  missing = [f"  {name}: {expected_path(data_dir, folder, split)} with columns "
             f"{', '.join(columns)}"
             for name, folder, split, columns in needed
             if local_file(data_dir, folder, split) is None]
  if missing:
    raise EvalDataError(
        f"benchmark files missing under --data_dir={data_dir} (layout <data_dir>/<benchmark>/"
        "<split>.jsonl or .parquet, columns as the source data set); expected:\n"
        + "\n".join(missing) + "\n(use --run_only to evaluate fewer benchmarks)")
