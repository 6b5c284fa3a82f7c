"""A progress bar over a stream of finished answers: items/s, tokens/s and ETA (tqdm)."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

import tqdm

T = TypeVar("T", bound=tuple)


def track(answers: Iterable[T], total: int, desc: str, enabled: bool = True,
          done: int = 0) -> Iterator[T]:
  """Yield `answers` ((index, tokens) pairs) unchanged while a bar on stderr counts them;
  `done` items are finished before the first (e.g. skipped). tqdm's rate is items/s and
  its ETA assumes the rest finish at that rate; tokens/s is over the generated tokens."""
  bar = tqdm.tqdm(total=total, initial=done, desc=desc, unit="item", file=sys.stderr,
                  disable=not enabled, smoothing=0.1, dynamic_ncols=True)
  start, tokens = time.perf_counter(), 0
  try:
    for answer in answers:
      tokens += len(answer[1])
      bar.set_postfix_str(f"{tokens / max(time.perf_counter() - start, 1e-9):.1f} tokens/s",
                          refresh=False)
      bar.update(1)
      yield answer
  finally:
    bar.close()
