"""Submodules imported on first attribute access (PEP 562), so `import hrm_jax` stays as fast
as the names it re-exports while `hrm_jax.optim.adam_atan2` or `hrm_jax.train.loop` work
without importing them first."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Iterable


def submodules(package: str, path: Iterable[str], namespace: dict[str, Any]
               ) -> tuple[frozenset[str], Callable[[str], Any], Callable[[], list[str]]]:
  """(names, __getattr__, __dir__) for the package `package` at `path` whose globals are
  `namespace`; names: every module and subpackage in its directory (none forgotten)."""
  names = frozenset(m.name for m in pkgutil.iter_modules(path))

  def getattr_(name: str) -> Any:
    if name in names:
      return importlib.import_module(f"{package}.{name}")
    raise AttributeError(f"module {package!r} has no attribute {name!r}")

  def dir_() -> list[str]:
    return sorted(set(namespace) | names)

  return names, getattr_, dir_
