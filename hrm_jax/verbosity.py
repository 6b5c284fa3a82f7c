"""Quiet by default: a command's screen shows its own progress lines, not its libraries' INFO.

absl's app.run raises an unset --verbosity to 0 (INFO), so orbax's save and restore reports
(dozens of lines per checkpoint) land between the progress lines. `hrm_jax.cli.run` calls
`quiet_by_default()` before every script's main(); an explicit --verbosity=0 shows INFO
again, --verbosity=1 DEBUG too.
"""

from __future__ import annotations

from absl import flags, logging


def quiet_by_default() -> None:
  """Warnings and errors only, unless --verbosity was given on the command line."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
