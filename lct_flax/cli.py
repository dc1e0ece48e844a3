"""Entry-point wrapper: expected failures become one clear line on stderr and a non-zero exit.

A bad config, a missing dataset, an incompatible workdir and the like raise ValueError (or one of
its kin below) with a message that names the problem and the fix; users should see that line, not
a traceback. `--verbose` shows the traceback too. Command lines that cannot be parsed (unknown
flags or config keys, values of the wrong type, a missing config file) are refused the same way by
`parse_flags`, before any heavy import; TensorFlow's import banners are kept off the console
(`quiet_tensorflow`).
"""

from __future__ import annotations

import logging as std_logging
import os
import re
import sys
from typing import Callable, Iterator, Sequence

from absl import app
from absl import flags
from absl import logging

from lct_flax import config_schema
from lct_flax import quiet_tensorflow

flags.DEFINE_bool("verbose", False, "Show tracebacks of expected errors, library INFO lines "
                  "and absl's full log prefix too.")

# Errors whose message is the whole story. Anything else is a bug and keeps its traceback.
EXPECTED_ERRORS = (ValueError, FileNotFoundError, PermissionError, RuntimeError)


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# absl's message for a value that does not parse: "flag --config.KEY=VALUE: reason".
_BAD_CONFIG_VALUE = re.compile(r"^flag --config\.([\w.]+)=(.*?): ", re.DOTALL)


class FlagError(ValueError):
  """A command line that cannot be parsed."""


# Library warnings that say nothing to a user: tfds' about the dataset directory it is writing.
_NOISE = ("has no dataset_info.json",)


class _OwnInfoOnly(std_logging.Filter):
  """Keeps INFO lines from this package only; libraries (orbax, jax, tfds) show warnings and up,
  but for the known noise."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno < std_logging.WARNING:
      return record.pathname.startswith(_PACKAGE_DIR)
    return not any(text in record.getMessage() for text in _NOISE)


class _ConsoleFormatter(std_logging.Formatter):
  """`HH:MM:SS message` (warnings and errors say so), instead of absl's prefix of severity, date,
  thread and file:line, which --verbose keeps."""

  def format(self, record: std_logging.LogRecord) -> str:
    level = "" if record.levelno < std_logging.WARNING else f"{record.levelname.lower()}: "
    return f"{self.formatTime(record, '%H:%M:%S')} {level}{record.getMessage()}"


def run(main: Callable[[list[str]], None]) -> None:
  """`app.run(main)`, printing expected errors as `error: <message>` and exiting with 1."""
  quiet_tensorflow.install()

  def guarded(argv):
    if not flags.FLAGS.verbose:
      logging.get_absl_handler().addFilter(_OwnInfoOnly())
      logging.get_absl_handler().setFormatter(_ConsoleFormatter())
    try:
      main(argv)
    except EXPECTED_ERRORS as error:
      if flags.FLAGS.verbose:
        raise
      _exit_with(str(error).strip().splitlines()[0] if str(error).strip() else
                 type(error).__name__, code=1)

  app.run(guarded, flags_parser=_parse_flags)


def parse_flags(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """absl's flag parsing; FlagError with one line for anything it cannot parse."""
  for config_file in _config_files(argv):
    if not os.path.isfile(config_file):
      raise FlagError(f"config file {config_file!r} does not exist; pass "
                      f"--config=configs/<experiment>.py.")
  try:
    return flag_values(list(argv))
  except flags.IllegalFlagValueError as error:
    raise FlagError(_bad_value_message(str(error))) from None
  except flags.Error as error:
    raise FlagError(f"{error}; see --helpfull for the flags.") from None
  except (AttributeError, KeyError) as error:  # ml_collections: --config.KEY with an unknown KEY
    raise FlagError(_unknown_key_message(error, argv)) from None
  except SyntaxError as error:
    raise FlagError(f"{error.filename} is not a Python config file ({error.msg}, line "
                    f"{error.lineno}).") from None


def _unknown_key_message(error: Exception, argv: Sequence[str]) -> str:
  """One line for ml_collections' error on an unknown --config.KEY: the whole dotted key as given,
  and the known key it suggests ("'atention'\nDid you mean "attention" instead of ...")."""
  while isinstance(error, BaseException) and error.args:   # AttributeError(KeyError(message))
    error = error.args[0]
  text = str(error)
  first, _, rest = text.partition("\n")
  leaf = first.strip("\"' ")
  paths = [arg.split("=", 1)[0].lstrip("-").split(".")[1:] for arg in argv[1:]
           if re.match(r"^--?config\.", arg)]
  key = next((".".join(p[:p.index(leaf) + 1]) for p in paths if leaf in p), leaf)
  suggestion = re.search(r'Did you mean "([^"]+)"', rest)
  hint = ""
  if suggestion:
    hint = f" (did you mean {key[:len(key) - len(leaf)] + suggestion.group(1)!r}?)"
  return (f"the config has no key {key!r}{hint}; check the --config.KEY overrides against the "
          f"config file.")


def _config_files(argv: Sequence[str]) -> Iterator[str]:
  """The files of --config=PATH[:ARG] and --config PATH[:ARG] (ml_collections' config flag)."""
  for i, arg in enumerate(argv[1:], 1):
    if re.match(r"^--?config=", arg):
      yield arg.split("=", 1)[1].split(":", 1)[0]
    elif re.match(r"^--?config$", arg):
      yield (argv[i + 1] if i + 1 < len(argv) else "").split(":", 1)[0]


def _bad_value_message(message: str) -> str:
  """One line for absl's IllegalFlagValueError: a config value of the wrong type says what the
  key allows; an error raised by a config's get_config() keeps only its last line."""
  bad_value = _BAD_CONFIG_VALUE.match(message)
  if bad_value and config_schema.describe(bad_value.group(1)):
    key, value = bad_value.groups()
    return f"config.{key}={value!r} is not allowed: it must be {config_schema.describe(key)}."
  if "Error whilst parsing config file" in message:
    last = message.strip().splitlines()[-1]
    return f"{message.split(':', 1)[0]}: {last.split(': ', 1)[-1]}"
  return f"{message.strip().splitlines()[0]}; see --helpfull for the flags."


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return parse_flags(argv)
  except FlagError as error:
    _exit_with(str(error), code=2)


def _exit_with(message: str, code: int) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)
