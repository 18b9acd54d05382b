"""What counts as a user's error, and how the entry points report it.

A user error (a bad config value, a damaged shard, classifiers that are not good enough) is
reported as one line naming the file, field or modality, with exit status 2, never a
traceback: the message is the whole story, and the traceback would bury it. Every entry
point (``mmplatform ...``, ``python -m mmplatform``, the sweep scripts) goes through
:func:`report_user_errors`, so the list of error types lives here only, and parses its command
line with :class:`UserErrorArgumentParser`, so a bad flag is one line too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

USER_ERROR_EXIT_STATUS = 2


class UserErrorArgumentParser(argparse.ArgumentParser):
    """argparse's errors (an unknown flag, a value of the wrong type or out of range) as one line,
    ``<prog>: error: argument --flag: <problem>``, and exit status 2: argparse itself prints the
    whole usage first, a screenful above the line that names the flag. Sub-parsers inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(USER_ERROR_EXIT_STATUS, f"{self.prog}: error: {first_line(message)} (--help shows the usage)\n")


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exceptions whose message is complete for a user; imported late to keep the CLI light."""
    from data_pipelines.manifest import ManifestError
    from data_pipelines.shard_source import ShardError
    from mmplatform.classifier_gate import ClassifierError
    from mmplatform.config import ConfigError
    from mmplatform.training.checkpointing import CheckpointWriteError

    return ConfigError, ManifestError, ShardError, ClassifierError, CheckpointWriteError


def first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return " ".join(line.strip() for line in text.splitlines())


@contextmanager
def report_user_errors(program: str) -> Iterator[None]:
    """Turn a user error raised inside into ``<program>: error: <message>`` and exit status 2."""
    try:
        yield
    except user_error_types() as error:
        print(f"{program}: error: {first_line(error)}", file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT_STATUS) from None


def run_reporting_user_errors(program: str, main: Callable[[], int | None]) -> int:
    with report_user_errors(program):
        return int(main() or 0)
