"""Export a store's tile footprints to GeoParquet (or any file GeoPandas writes).

::

    python -m pipelines.footprints data/stores/pastis-hd.zarr -o tiles.parquet [--crs EPSG:4326]

One row per georeferenced tile: ``index`` (row in the store), ``tile``, ``split``, ``crs`` (the tile's own
CRS) and the footprint geometry. A GeoParquet column has one CRS: a store whose tiles share one keeps it,
one spanning several (UTM zones) is reprojected to ``--crs`` (default EPSG:4326 then). Tiles without a
georeference are left out and counted. Exit 2 with one line for a missing store, a version-1 store (no
footprints) or a store whose archive has none.
"""

from __future__ import annotations

import argparse
import sys

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from pipelines.store import StoreReader

MIXED_DEFAULT_CRS = "EPSG:4326"


def footprint_frame(store: str, crs: str | None = None, storage_options: dict | None = None) -> gpd.GeoDataFrame:
    """The footprints of ``store`` as a GeoDataFrame in ``crs`` (default: the tiles' CRS if they share one)."""
    reader = StoreReader(store, storage_options)
    fp = reader.footprints()
    keep = np.flatnonzero(fp["crs"] != "")
    crss = sorted(set(fp["crs"][keep].tolist()))
    target = crs or (crss[0] if len(crss) == 1 else MIXED_DEFAULT_CRS)
    parts = []
    for c in crss:
        idx = keep[fp["crs"][keep] == c]
        geoms = shapely.from_geojson(fp["footprint"][idx].astype(str))
        part = gpd.GeoDataFrame({"index": idx, "tile": fp["id"][idx].astype(str), "split": fp["split"][idx].astype(str),
                                 "crs": c}, geometry=geoms, crs=c)
        parts.append(part.to_crs(target))
    if not parts:
        return gpd.GeoDataFrame({"index": [], "tile": [], "split": [], "crs": []}, geometry=[], crs=target)
    return gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), crs=target).sort_values("index", ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.footprints", description=__doc__.split("\n\n")[0])
    p.add_argument("store", help="store path or s3:// URL (<out>/<dataset>.zarr)")
    p.add_argument("-o", "--output", required=True, help="output file: .parquet (GeoParquet), .gpkg, .geojson, ...")
    p.add_argument("--crs", default=None, help="CRS of the output (default: the tiles' own if they share one, "
                                               f"else {MIXED_DEFAULT_CRS})")
    args = p.parse_args(argv)
    try:
        frame = footprint_frame(args.store, args.crs)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if args.output.endswith(".parquet"):
            frame.to_parquet(args.output)
        else:
            frame.to_file(args.output)
    except (OSError, ValueError) as e:
        print(f"error: --output {args.output}: {e}", file=sys.stderr)
        return 2
    n = len(StoreReader(args.store))
    print(f"wrote {len(frame)} footprints ({n - len(frame)} tiles without a georeference) in {frame.crs} "
          f"to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
