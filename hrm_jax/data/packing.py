"""Example -> row pieces (docs/reference.md#packing) and rows padded to a fixed length.

With instruction i and response o (o ends with eoa): inputs `i ++ o[:-1]`, labels
`[-100]*(len(i)-1) ++ o` (`i[1:] ++ o` without target_only), positions `0 .. len(i)+len(o)-2`,
prefix (bidirectional) length len(i). So the last prompt token predicts the first response
token, as in a causal LM's prefill. Padding: inputs 0, labels -100, positions 0, segment 0.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

IGNORE_LABEL = -100  # the model's ignore label (hrm_jax.IGNORE_LABEL); data does not import it
FIELDS = ("inputs", "labels", "positions", "segment_ids", "prefix_mask")


def empty_rows(num_rows: int, row_len: int) -> dict[str, np.ndarray]:
  """Padding rows [num_rows, row_len]."""
  out = {k: np.zeros((num_rows, row_len), np.int32) for k in ("inputs", "positions", "segment_ids")}
  out["labels"] = np.full((num_rows, row_len), IGNORE_LABEL, np.int32)
  out["prefix_mask"] = np.zeros((num_rows, row_len), bool)
  return out


def fill_row(out: dict[str, np.ndarray], r: int,
             examples: Sequence[tuple[np.ndarray, np.ndarray]], target_only: bool = True) -> int:
  """Writes (instruction, response) examples into row r of `out`, in order; returns tokens used."""
  row_len = out["inputs"].shape[1]
  t = 0
  for seg, (inst, resp) in enumerate(examples, start=1):
    ni, no = len(inst), len(resp)
    n = ni + no - 1
    if ni < 1 or no < 2:
      raise ValueError(f"example {seg} of row {r}: instruction {ni} and response {no} tokens; "
                       "need >= 1 and >= 2")
    if t + n > row_len:
      raise ValueError(f"row {r}: examples need more than {row_len} tokens")
    out["inputs"][r, t:t + ni] = inst
    out["inputs"][r, t + ni:t + n] = resp[:-1]
    if not target_only:
      out["labels"][r, t:t + ni - 1] = inst[1:]
    out["labels"][r, t + ni - 1:t + n] = resp
    out["positions"][r, t:t + n] = np.arange(n, dtype=np.int32)
    out["segment_ids"][r, t:t + n] = seg
    out["prefix_mask"][r, t:t + ni] = True
    t += n
  return t


def pack_rows(rows: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]], row_len: int,
              target_only: bool = True) -> dict[str, np.ndarray]:
  """Rows of (instruction, response) examples -> padded arrays [len(rows), row_len]."""
  out = empty_rows(len(rows), row_len)
  for r, examples in enumerate(rows):
    fill_row(out, r, examples, target_only)
  return out
