"""JSON Lines: one JSON object per line, blank lines skipped, errors naming file and line."""

from __future__ import annotations

import json
from typing import Any


def read_objects(path: str, error: type[Exception] = ValueError) -> list[tuple[int, dict]]:
  """[(line number, object)] of `path`; a line that is not a JSON object raises `error`
  with `path:line` in its message."""
  rows = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row: Any = json.loads(line)
      except json.JSONDecodeError as e:
        raise error(f"{path}:{n}: not valid JSON ({e.msg})") from e
      if not isinstance(row, dict):
        raise error(f"{path}:{n}: expected a JSON object per line")
      rows.append((n, row))
  return rows
