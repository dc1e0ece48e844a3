"""Entry-point wrapper: expected failures become one clear line on stderr and a non-zero exit.

A bad config, a missing dataset, an incompatible workdir and the like raise ValueError (or one of
its kin below) with a message that names the problem and the fix; users should see that line, not
a traceback. `--verbose` shows the traceback too.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
from typing import Callable

from absl import app
from absl import flags
from absl import logging

flags.DEFINE_bool("verbose", False, "Show tracebacks of expected errors too.")

# Errors whose message is the whole story. Anything else is a bug and keeps its traceback.
EXPECTED_ERRORS = (ValueError, FileNotFoundError, PermissionError, RuntimeError)


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class _OwnInfoOnly(std_logging.Filter):
  """Keeps INFO lines from this package only; libraries (orbax, jax, tfds) show warnings and up."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or record.pathname.startswith(_PACKAGE_DIR)


def run(main: Callable[[list[str]], None]) -> None:
  """`app.run(main)`, printing expected errors as `error: <message>` and exiting with 1."""

  def guarded(argv):
    if not flags.FLAGS.verbose:
      logging.get_absl_handler().addFilter(_OwnInfoOnly())
    try:
      main(argv)
    except EXPECTED_ERRORS as error:
      if flags.FLAGS.verbose:
        raise
      _exit_with(str(error).strip().splitlines()[0] if str(error).strip() else
                 type(error).__name__, code=1)

  app.run(guarded, flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a one-line error for a flag or config key that does not exist."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    _exit_with(f"{error}; see --helpfull for the flags.", code=2)
  except (AttributeError, KeyError) as error:  # ml_collections: --config.KEY with an unknown KEY
    key = str(error).strip("\"'")
    _exit_with(f"the config has no key {key!r}; check the --config.KEY overrides against the "
               f"config file.", code=2)


def _exit_with(message: str, code: int) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)
