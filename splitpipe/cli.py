"""The ``splitpipe`` command line: parses arguments, calls the library, reports user errors in one line.

Each subcommand lives in :mod:`splitpipe.commands` and registers its own arguments; this module
only assembles them, configures logging, and turns :class:`SplitpipeError` into one line on
stderr and exit code 2. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from splitpipe import __version__
from splitpipe._env import log_level
from splitpipe.commands import COMMANDS
from splitpipe.errors import SplitpipeError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse prints the whole usage block by default)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="splitpipe", description="Split computing at the edge.")
    parser.add_argument("--version", action="version", version=f"splitpipe {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"splitpipe.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    named = getattr(logging, log_level(), None)
    level = logging.DEBUG if args.verbose else named if isinstance(named, int) else logging.INFO
    # splitpipe's own messages at ``level``; other libraries' (onnxscript's exporter, Ray) only
    # from warnings up, unless --verbose
    logging.basicConfig(
        level=level if args.verbose else max(level, logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("splitpipe").setLevel(level)
    try:
        code = args.func(args)
    except SplitpipeError as exc:
        sys.stderr.write(f"splitpipe {args.command}: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    return int(code or 0)


if __name__ == "__main__":
    raise SystemExit(main())
