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
      message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
      print(f"error: {message}", file=sys.stderr)
      sys.exit(1)

  app.run(guarded)
