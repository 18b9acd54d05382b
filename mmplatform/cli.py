"""The ``mmplatform <noun> <verb>`` command line.

Each noun lives in its own module under ``mmplatform.commands`` and registers itself with
``register_command``; this module only assembles the parser, so adding a noun never touches
an if/elif chain here.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

CommandAdder = Callable[[argparse._SubParsersAction], None]
_COMMANDS: dict[str, CommandAdder] = {}

# Modules that define nouns; importing one registers its noun.
COMMAND_MODULES = (
    "mmplatform.commands.data",
    "mmplatform.commands.classifiers",
    "mmplatform.commands.train",
    "mmplatform.commands.tracking",
)


def register_command(noun: str) -> Callable[[CommandAdder], CommandAdder]:
    """Register ``add(subparsers)`` that adds the parser of ``mmplatform <noun> ...``."""

    def decorator(add: CommandAdder) -> CommandAdder:
        if noun in _COMMANDS:
            raise ValueError(f"command {noun!r} registered twice")
        _COMMANDS[noun] = add
        return add

    return decorator


def build_parser() -> argparse.ArgumentParser:
    from mmplatform.user_errors import UserErrorArgumentParser

    for module in COMMAND_MODULES:
        importlib.import_module(module)
    parser = UserErrorArgumentParser(prog="mmplatform", description=__doc__.splitlines()[0])
    nouns = parser.add_subparsers(dest="noun", required=True, metavar="<noun>")
    for noun in sorted(_COMMANDS):
        _COMMANDS[noun](nouns)
    return parser


def main(argv: list[str] | None = None) -> int:
    from mmplatform.user_errors import run_reporting_user_errors

    args = build_parser().parse_args(argv)
    # Every leaf parser sets `run` with set_defaults(run=...); it returns an exit status.
    return run_reporting_user_errors("mmplatform", lambda: args.run(args))


if __name__ == "__main__":
    # `python -m mmplatform.cli` runs this file as `__main__`, a second copy of this module
    # whose registry the command modules never see: run the real module's main instead.
    from mmplatform.cli import main as _main

    raise SystemExit(_main())
