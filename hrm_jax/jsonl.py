"""JSON Lines: one JSON object per line, blank lines skipped, errors naming file and line."""

from __future__ import annotations

import json
from typing import Any


def parse_line(path: str, n: int, line: bytes | str, error: type[Exception] = ValueError
               ) -> dict | None:
  """The object on line `n` of `path` (raw bytes or text), None for a blank line; bad UTF-8,
  bad JSON or a non-object raises `error` with `path:n` in its message."""
  if isinstance(line, bytes):
    try:
      line = line.decode("utf-8")
    except UnicodeDecodeError as e:
      raise error(f"{path}:{n}: not valid UTF-8 (byte {e.start} of the line: {e.reason})") from e
  if not line.strip():
    return None
  try:
    row: Any = json.loads(line)
  except json.JSONDecodeError as e:
    raise error(f"{path}:{n}: not valid JSON ({e.msg})") from e
  if not isinstance(row, dict):
    raise error(f"{path}:{n}: expected a JSON object per line")
  return row


def read_objects(path: str, error: type[Exception] = ValueError) -> list[tuple[int, dict]]:
  """[(line number, object)] of `path`; a line that is not a JSON object (or not UTF-8)
  raises `error` with `path:line` in its message."""
  rows = []
  with open(path, "rb") as f:
    for n, line in enumerate(f, 1):
      row = parse_line(path, n, line, error)
      if row is not None:
        rows.append((n, row))
  return rows
