"""What the four entrypoints (``python -m ray_jobs.pretrain | finetune | evaluate | embed``) share:
``--config`` + repeatable ``--set``, logging, and one way to report a bad command line.

An entrypoint is two functions: ``prepare(args)`` checks everything that can be checked before any
work starts (config, stores, splits, checkpoints) and ``run(prepared)`` does the work. A mistake the
user can fix — :class:`ConfigError`, ``ValueError``, ``FileNotFoundError`` (and the other file-access
errors of :data:`USER_ERRORS`) raised by ``prepare``, a :class:`ConfigError` raised by ``run`` (an
unreachable Ray address, GPUs the cluster does not have, a run name another driver is running) or a
bad command line — is printed as one ``error: ...`` line (credentials redacted) with exit code 2;
anything else raised later is a real failure and keeps its traceback.

The jobs that use Ray take ``--address``: without it (and without ``RAY_ADDRESS``) they start a
local Ray instance of their own (:func:`ray_jobs.cluster.init_ray`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Any, Callable, NoReturn

from ray_jobs.cluster import use_cli_address
from ray_jobs.config import ConfigError
from ray_jobs.credentials import install_redaction, redact
from ray_jobs.overrides import one_line

__all__ = ["USER_ERRORS", "Parser", "entrypoint_parser", "setup_logging", "run_cli", "script", "user_error"]

USER_ERRORS = (ConfigError, ValueError, FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)


def user_error(e: BaseException | str) -> int:
    """Print ``error: <message>`` as one line on stderr, credentials redacted; returns exit code 2."""
    print(f"error: {redact(one_line(e))}", file=sys.stderr)
    return 2


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``<prog>: error: <problem> (see --help)``, exit 2) instead of
    the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see --help)\n")


def entrypoint_parser(prog: str, doc: str | None, config_help: str, address: bool = True) -> argparse.ArgumentParser:
    """The command line every entrypoint starts from: ``--config``, repeatable ``--set`` and (jobs
    that use Ray) ``--address``; the description is the first paragraph of the entrypoint's docstring."""
    p = Parser(prog=prog, description=(doc or "").split("\n\n")[0])
    p.add_argument("--config", required=True, help=config_help)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dotted config key; the value is parsed as YAML (repeatable)")
    if address:
        p.add_argument("--address", default=None,
                       help="Ray cluster to run on: host:port of its GCS, ray://host:port or auto (default: "
                            "$RAY_ADDRESS, as set by `ray job submit`; without either, a local Ray instance)")
    return p


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    install_redaction()


def run_cli(parser: argparse.ArgumentParser, prepare: Callable[[argparse.Namespace], Any],
            run: Callable[[Any], int], argv: list[str] | None = None) -> int:
    """Parse ``argv``, ``prepare(args)``, ``run(prepared)``; returns the process exit code (2 for a
    user error in ``prepare`` or a :class:`ConfigError` in ``run``, printed as one line)."""
    setup_logging()
    args = parser.parse_args(argv)
    use_cli_address(getattr(args, "address", None))
    try:
        prepared = prepare(args)
    except USER_ERRORS as e:
        return user_error(e)
    try:
        return run(prepared)
    except ConfigError as e:
        return user_error(e)


def script(module: str) -> NoReturn:
    """``if __name__ == "__main__"`` of an entrypoint: exit with ``<module>.main()``.

    The module is imported under its own name and its ``main`` runs, not ``__main__``'s: Ray pickles
    the functions and classes of ``__main__`` by value (a train loop's closure does not pickle) and
    those of an importable module by reference."""
    sys.exit(importlib.import_module(module).main())
