"""Write a miniature raw archive of a dataset in its real on-disk layout.

::

    python -m pipelines.samples --dataset planted --out data/raw/planted [--tiles 3000] [--seed 0]
    make sample-data DATASET=planted RAW=data/raw/planted [TILES=3000]

Dispatches to the dataset's generator module (``pipelines/samplegen/<module>.py`` beside the reader
``pipelines/sources/<module>.py``; see :mod:`pipelines.samplegen`).
Exit code 2 with one error line for an unknown dataset or a generator that is not written yet.
"""

from __future__ import annotations

import argparse
import sys
import time

from pipelines.datasets import dataset_names
from pipelines.samplegen import generator_available, get_generator


def write_sample(dataset: str, out: str, tiles: int | None = None, seed: int = 0) -> None:
    get_generator(dataset)(out, tiles=tiles, seed=seed)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.samples", description=__doc__.split("\n\n")[0])
    with_generator = [d for d in dataset_names() if generator_available(d)]
    p.add_argument("--dataset", required=True, help=f"one of: {', '.join(with_generator)}")
    p.add_argument("--out", required=True, help="folder to write the raw archive into")
    p.add_argument("--tiles", type=int, default=None, help="number of tiles (default: the miniature size)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        gen = get_generator(args.dataset)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        gen(args.out, tiles=args.tiles, seed=args.seed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.dataset} sample to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
