"""Run ``<entrypoint> --help`` for many entrypoints, each in a child forked from one warmed interpreter.

Usage: ``python tests/help_runner.py '<json list of argv>'``; prints a JSON list of
``{"rc": int, "out": str}``, one per argv, in order.

Why a fork server: every entrypoint imports torch, Ray and MLflow, about ten seconds of one core per
interpreter on the 2-core CI machine, while its own code and argument parser take well under one.
This process imports the shared heavy packages once (never initialising Ray or starting threads) and
each child then runs the real module as ``__main__`` with ``--help``, as ``python -m`` would.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import tempfile
import traceback
from pathlib import Path
from typing import IO

import mlflow  # noqa: F401  (the shared imports are the point: children inherit them)
import numpy  # noqa: F401
import ray  # noqa: F401
import ray.data  # noqa: F401
import ray.train  # noqa: F401
import torch  # noqa: F401
import zarr  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


def _child(argv: list[str], out_fd: int) -> None:
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    code = 0
    try:
        if argv[0] == "-m":
            sys.path[0] = str(REPO)  # ``python -m``: the working directory first
            sys.argv = [argv[1], *argv[2:], "--help"]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            script = REPO / argv[0]
            sys.path[0] = str(script.parent)  # ``python path.py``: the script's folder first
            sys.argv = [str(script), *argv[1:], "--help"]
            runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # report anything, never fall back into the parent's loop
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main(argvs: list[list[str]]) -> list[dict]:
    width = max(2, os.cpu_count() or 1)
    results: list[dict] = [{}] * len(argvs)
    running: dict[int, tuple[int, IO[bytes]]] = {}
    pending = list(enumerate(argvs))

    def reap() -> None:
        pid, status = os.wait()
        i, f = running.pop(pid)
        f.seek(0)
        results[i] = {"rc": os.waitstatus_to_exitcode(status), "out": f.read().decode(errors="replace")}
        f.close()

    while pending or running:
        while pending and len(running) < width:
            i, argv = pending.pop(0)
            f = tempfile.TemporaryFile()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(argv, f.fileno())
            running[pid] = (i, f)
        reap()
    return results


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
