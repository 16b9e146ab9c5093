"""What the four entrypoints (``python -m ray_jobs.pretrain | finetune | evaluate | embed``) share:
``--config`` + repeatable ``--set``, logging, and one way to report a bad command line.

An entrypoint is two functions: ``prepare(args)`` checks everything that can be checked before any
work starts (config, stores, splits, checkpoints) and ``run(prepared)`` does the work. A mistake the
user can fix — :class:`ConfigError`, ``ValueError``, ``FileNotFoundError`` raised by ``prepare`` —
is printed as one ``error: ...`` line with exit code 2; anything raised later is a real failure and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Any, Callable, NoReturn

from ray_jobs.config import ConfigError

__all__ = ["USER_ERRORS", "entrypoint_parser", "setup_logging", "run_cli", "script"]

USER_ERRORS = (ConfigError, ValueError, FileNotFoundError)


def entrypoint_parser(prog: str, doc: str | None, config_help: str) -> argparse.ArgumentParser:
    """The command line every entrypoint starts from: ``--config`` and repeatable ``--set``; the
    description is the first paragraph of the entrypoint's docstring."""
    p = argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n\n")[0])
    p.add_argument("--config", required=True, help=config_help)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dotted config key; the value is parsed as YAML (repeatable)")
    return p


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def run_cli(parser: argparse.ArgumentParser, prepare: Callable[[argparse.Namespace], Any],
            run: Callable[[Any], int], argv: list[str] | None = None) -> int:
    """Parse ``argv``, ``prepare(args)``, ``run(prepared)``; returns the process exit code (2 for a
    user error in ``prepare``, printed as one line)."""
    setup_logging()
    args = parser.parse_args(argv)
    try:
        prepared = prepare(args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run(prepared)


def script(module: str) -> NoReturn:
    """``if __name__ == "__main__"`` of an entrypoint: exit with ``<module>.main()``.

    The module is imported under its own name and its ``main`` runs, not ``__main__``'s: Ray pickles
    the functions and classes of ``__main__`` by value (a train loop's closure does not pickle) and
    those of an importable module by reference."""
    sys.exit(importlib.import_module(module).main())
