"""The `claas` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from services.cli import client_cmds, config_cmd, demo, keys_cmd, model_cmd, up_cmd
from services.cli.eval import command as eval_cmd

#: Each command module exposes ``register(subparsers)`` and sets ``func`` on its parsers.
COMMAND_MODULES: list = [model_cmd, up_cmd, client_cmds, keys_cmd, demo, eval_cmd, config_cmd]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="claas", description="Continual Learning as a Service: chat, give feedback, get a better adapter."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
