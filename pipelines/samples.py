"""Write a miniature raw archive of a dataset in its real on-disk layout.

::

    python -m pipelines.samples --dataset planted --out data/raw/planted [--tiles 3000] [--seed 0]
    python -m pipelines.samples --dataset pastis-hd --variant pastis-r --out data/raw/pastis-r
    make sample-data DATASET=planted RAW=data/raw/planted [TILES=3000] [VARIANT=...]

Dispatches to the dataset's generator module (``pipelines/samplegen/<module>.py`` beside the reader
``pipelines/sources/<module>.py``; see :mod:`pipelines.samplegen`).
``--variant`` writes another form of the archive that users hold (``--list-variants`` shows them).
Exit code 2 with one error line for an unknown dataset or variant, or a generator that is not written yet.
"""

from __future__ import annotations

import argparse
import sys
import time

from pipelines.datasets import dataset_names
from pipelines.samplegen import generator_available, generator_variants, get_generator


def write_sample(dataset: str, out: str, tiles: int | None = None, seed: int = 0, variant: str | None = None) -> None:
    gen = get_generator(dataset)
    if variant is None:
        gen(out, tiles=tiles, seed=seed)
        return
    known = generator_variants(dataset)
    if variant not in known:
        raise ValueError(f"--variant {variant!r}: the {dataset} generator writes "
                         + (f"the variants {', '.join(known)}" if known else "no variants"))
    gen(out, tiles=tiles, seed=seed, variant=variant)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.samples", description=__doc__.split("\n\n")[0])
    with_generator = [d for d in dataset_names() if generator_available(d)]
    p.add_argument("--dataset", required=True, help=f"one of: {', '.join(with_generator)}")
    p.add_argument("--out", required=True, help="folder to write the raw archive into")
    p.add_argument("--tiles", type=int, default=None, help="number of tiles (default: the miniature size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", default=None, help="archive variant (default: the archive as its authors publish it)")
    p.add_argument("--list-variants", action="store_true", help="print the dataset's variants and exit")
    args = p.parse_args(argv)
    try:
        get_generator(args.dataset)
        if args.list_variants:
            for name, desc in generator_variants(args.dataset).items():
                print(f"{name}: {desc}")
            return 0
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        write_sample(args.dataset, args.out, args.tiles, args.seed, args.variant or None)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    what = f"{args.dataset} sample" + (f" ({args.variant})" if args.variant else "")
    print(f"wrote {what} to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
