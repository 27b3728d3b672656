"""`softreach COMMAND ...`: the parser from every subcommand's module; errors are one line, exit code 2."""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import UserError
from . import bench, collect, ladder, report, run, suite, sweep, verify

COMMANDS = (run, suite, ladder, sweep, collect, report, verify, bench)  # each has add_parser(sub) and main(args)


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr and exit code 2, as every other bad input."""

    def error(self, message: str):
        self.exit(2, f"softreach: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="softreach", description="Soft prompt reachability of residual-stream "
                                     "targets. Every setting is a flag and a --set KEY=VALUE key.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.add_parser(sub).set_defaults(func=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if getattr(args, "no_settings", None) and args.set:
            raise UserError(f"`softreach {args.no_settings}` takes no settings (--set {args.set[0]})")
        return args.func(args)
    except UserError as e:
        print(f"softreach: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("softreach: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
