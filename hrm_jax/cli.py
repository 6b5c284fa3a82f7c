"""How every script starts and fails: `run(main)` in place of `absl.app.run`.

- The JAX platform is chosen before anything starts a backend (`platforms.select_default`).
- Words left on the command line after the flags are refused: an unquoted
  `--prompt=What is 12*7?` would otherwise answer "What" and drop the rest.
- A user error (a bad flag or value, an unknown config key, a missing, existing or
  unwritable file, a bad data line: `errors.UserError`, `app.UsageError`, absl flag errors,
  the file errors of `OSError`) prints one line `SCRIPT: error: MESSAGE` and exits 2; a run
  that stops for a reason outside the code (`errors.RunError`, other `OSError`s such as a
  full disk) exits 1 the same way; Ctrl-C outside training exits 130 with one line. Any other
  exception is a bug and keeps its traceback. `--verbosity=1` (or `HRM_JAX_TRACEBACK=1`)
  prints the traceback of every error.
"""

from __future__ import annotations

import itertools
import os
import sys
import traceback
from typing import Callable, NoReturn, Optional, Sequence

from absl import app, flags

from hrm_jax import errors, platforms, verbosity

USER_ERRORS = (errors.UserError, app.UsageError, flags.Error, FileNotFoundError,
               FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
RUN_ERRORS = (errors.RunError, OSError)
TRACEBACK_ENV = "HRM_JAX_TRACEBACK"


def script_name() -> str:
  return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "hrm_jax"


def want_traceback() -> bool:
  if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
    return True
  try:
    return flags.FLAGS.is_parsed() and flags.FLAGS["verbosity"].value >= 1
  except KeyError:
    return False


def fail(message: str, code: int = 2) -> NoReturn:
  """Print `SCRIPT: error: MESSAGE` on stderr (after the traceback, if asked for) and exit."""
  if want_traceback() and sys.exc_info()[0] is not None:
    traceback.print_exc()
  first, *rest = str(message).strip().splitlines() or [""]
  print(f"{script_name()}: error: {' '.join([first, *(l.strip() for l in rest)])}",
        file=sys.stderr, flush=True)
  sys.exit(code)


def describe(e: BaseException) -> str:
  """The message of an error, with the path an OSError names when its text lacks it."""
  if isinstance(e, OSError) and e.filename and str(e.filename) not in str(e.strerror or ""):
    return f"{e.filename}: {e.strerror or e}"
  return str(e) or type(e).__name__


def report(e: BaseException) -> NoReturn:
  """Exit with one line for a user error (2) or a run error (1); re-raise anything else."""
  if isinstance(e, KeyboardInterrupt):
    sys.stdout.flush()
    print(f"{script_name()}: interrupted" + (f": {e}" if str(e) else ""), file=sys.stderr,
          flush=True)
    # Worker threads (orbax, grain) may still be running: leave without joining them, so no
    # "cannot schedule new futures after interpreter shutdown" tracebacks follow.
    os._exit(130)
  if isinstance(e, USER_ERRORS):
    fail(describe(e), 2)
  if isinstance(e, RUN_ERRORS):
    fail(describe(e), 1)
  raise e


def parser(parse: Optional[Callable[[list[str]], list[str]]] = None,
           positional: bool = False) -> Callable[[list[str]], list[str]]:
  """An absl flags parser: `parse` (default: the flags themselves) with its errors as one
  line, and stray positional arguments refused unless `positional`."""
  def run_parser(argv: list[str]) -> list[str]:
    try:
      rest = parse(argv) if parse is not None else flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 - a flag parse error of any kind is the user's
      if isinstance(e, (*USER_ERRORS, ValueError, KeyError, AttributeError)):
        fail(str(e))
      raise
    if not positional and len(rest) > 1:
      fail(f"unexpected argument(s) {' '.join(map(repr, rest[1:]))}: every input is a "
           f"--flag=value{quoting_hint(argv, rest[1:])}")
    return rest
  return run_parser


def quoting_hint(argv: Sequence[str], stray: Sequence[str]) -> str:
  """'; did you mean --prompt="What is 12*7?"' when the stray words follow a --flag=value
  (a value with spaces the shell split), else ''."""
  for i, arg in enumerate(argv[1:], 1):
    if arg == stray[0] and argv[i - 1].startswith("--") and "=" in argv[i - 1]:
      words = list(itertools.takewhile(lambda a: not a.startswith("-"), argv[i:]))
      name, value = argv[i - 1].split("=", 1)
      return f"; quote a value with spaces: {name}=\"{' '.join([value, *words])}\""
  return ""


def run(main: Callable[[list[str]], object], *,
        flags_parser: Optional[Callable[[list[str]], list[str]]] = None,
        positional: bool = False, argv: Optional[Sequence[str]] = None) -> None:
  """absl.app.run(main) with the platform choice, quiet logs and one-line errors above."""
  platforms.select_default()

  def wrapped(args: list[str]):
    verbosity.quiet_by_default()
    try:
      return main(args)
    except BaseException as e:  # noqa: BLE001 - sorted by report; bugs are re-raised
      if isinstance(e, SystemExit):
        raise
      report(e)

  app.run(wrapped, argv=list(argv) if argv is not None else None,
          flags_parser=parser(flags_parser, positional))
