"""One line naming a command's own exit code and what it means, for `make` recipes.

    python -m infra.exit_status ingest CODE --dataset DATASET --out OUT

GNU make exits 0 when every recipe succeeds and 2 when one fails, whatever the recipe's exit code
(1 is reserved for `make -q`), so `make ingest` cannot return the ingest's documented 3 (partial:
some tiles quarantined). The `ingest` recipe therefore prints this line before make's own
"*** [ingest] Error N" and exits with the ingest's code, which make turns into 2:

    ingest finished with exit code 3: partial, 2 tiles quarantined, see data/stores/planted.zarr/quarantine.json; make exits 2

This module stays light (no Ray, no zarr): it runs after every `make ingest`. The codes are those
of `pipelines.ingest` (EXIT_OK, EXIT_USAGE, EXIT_QUARANTINED in `pipelines.ingest_outcome`); tests/infra
checks they agree.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

import fsspec

INGEST_OK, INGEST_USAGE, INGEST_PARTIAL = 0, 2, 3


def _store_url(out: str, dataset: str) -> str:
    return f"{out.rstrip('/')}/{dataset}.zarr"


def _quarantined(store: str) -> str:
    """``"N tiles"`` from ``<store>/quarantine.json``, or ``"some tiles"`` if it cannot be read."""
    try:
        with fsspec.open(f"{store}/quarantine.json", "r") as f:
            n = int(json.load(f)["quarantined"])
    except Exception:  # a summary line must never fail the recipe it reports on
        return "some tiles"
    return f"{n} tile{'s' if n != 1 else ''}"


def describe_ingest(code: int, dataset: str, out: str) -> str:
    store = _store_url(out, dataset)
    if code == INGEST_OK:
        return f"ingest finished with exit code 0: complete, every listed tile is in {store}"
    if code == INGEST_PARTIAL:
        meaning = f"partial, {_quarantined(store)} quarantined, see {store}/quarantine.json"
        verb = "finished"
    elif code == INGEST_USAGE:
        meaning, verb = "usage error, see the `error:` line above; nothing was written", "failed"
    elif code > 128 and code - 128 in {s.value for s in signal.Signals}:
        meaning, verb = f"killed by {signal.Signals(code - 128).name}; rerun to resume", "stopped"
    elif code == 1:
        meaning, verb = "unexpected error, see the traceback above; rerun to resume", "failed"
    else:
        meaning, verb = "undocumented code, see the output above", "failed"
    return f"ingest {verb} with exit code {code}: {meaning}; make exits 2"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infra.exit_status", description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["ingest"])
    ap.add_argument("code", type=int, help="the command's exit code")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--out", required=True, help="the ingest's --out (folder or s3:// prefix)")
    args = ap.parse_args(argv)
    line = describe_ingest(args.code, args.dataset, args.out)
    print(line, file=sys.stdout if args.code == 0 else sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
