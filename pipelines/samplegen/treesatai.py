"""Miniature TreeSatAI-TS archive in the HF release layout.

Written exactly as the real files are: the aerial GeoTIFF with tifffile (so it carries the archive's
``GDAL_NODATA="-9999"`` on uint8, RGB + unassociated-alpha photometric, 6-row strips, ETRS89/UTM 32N
GeoKeys), the series HDF5 with h5py (no attributes, no compression, vlen UTF-8 product names), the
genus-fraction JSON and the split lists (at the root and under ``split/``, as the zip unpacks), plus
the original single-date ``s1/60m`` and ``s2/60m`` tifs that only AnySat's ``*-mono`` variants read.

``layout="anysat"`` writes AnySat's re-packaged copy instead: ``sentinel/{stem}.h5`` without the year,
every mask array with 10 channels, and the derived ``s1-asc|s1-des/{stem}.pth`` tensors. That layout
exists only in AnySat's distribution; the reader handles both.

Planted, learnable signal: the dominant genus shifts NIR (S2 B08, B8A and the aerial IR band), and every
genus of a patch adds its own spectral signature to the S2 series (a fixed 0/1 pattern over the 10
bands, ``GENUS_CODES``), scaled by its area fraction, so each label of the multi-hot target (fraction
> 0.07), not only the dominant one, can be read off the pixels.
"""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import rasterio
import tifffile
from rasterio.transform import Affine

from pipelines.datasets import TREESAT_CLASSES

BASE_NAMES = (
    "Abies_alba_1_1005_WEFL_NLF", "Picea_abies_3_46636_WEFL_NLF",
    "Alnus_spec._5_13114_WEFL_NLF",  # dotted species name on purpose: real names have them, ids must not split at "."
    "Pseudotsuga_menziesii_1_339575_BI_NLF", "Quercus_petraea_2_84375_WEFL_NLF",
    "Fagus_sylvatica_9_29995_WEFL_NLF",
)
# genus -> species epithets, for extra names when more tiles are asked for
_SPECIES = {"Abies": "alba", "Acer": "pseudoplatanus", "Alnus": "spec.", "Betula": "spec.", "Cleared": "0",
            "Fagus": "sylvatica", "Fraxinus": "excelsior", "Larix": "decidua", "Picea": "abies",
            "Pinus": "sylvestris", "Populus": "spec.", "Prunus": "spec.", "Pseudotsuga": "menziesii",
            "Quercus": "robur", "Tilia": "spec."}
T_S2, T_ASC, T_DES = (1, 5, 9), (1, 4, 7), (3, 6)
AERIAL = 304
PIX = 6
# per genus, the S2 bands (of B2..B12) its presence raises, by SIGNATURE x its area fraction; a separate
# generator, so the archive's own random stream is the same as without the signature
GENUS_CODES = np.random.default_rng(20240511).random((len(TREESAT_CLASSES), 10)) < 0.4
SIGNATURE = 900.0
# ETRS89 / UTM 32N as GeoKeys: model type projected, raster pixel-is-area, EPSG 25832, metres
_GEOKEYS = (1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 25832, 3076, 0, 1, 9001)


def _names(n: int) -> list[str]:
    names = list(BASE_NAMES[:n])
    genera = list(_SPECIES)
    i = 0
    while len(names) < n:
        g = genera[i % len(genera)]
        names.append(f"{g}_{_SPECIES[g]}_{1 + i % 9}_{100000 + 37 * i}_{'BI' if i % 5 == 0 else 'WEFL'}_NLF")
        i += 1
    return names


def _labels(name: str, rng: np.random.Generator) -> list[list]:
    """1-3 genera; the patch's own genus dominates; the third one (if any) is below 0.07."""
    main = name.split("_")[0]
    others = [g for g in TREESAT_CLASSES if g != main]
    k = int(rng.integers(1, 4))
    fr = [round(float(rng.uniform(0.55, 0.8)), 4)]
    if k >= 2:
        fr.append(round(float(rng.uniform(0.08, 1 - fr[0] - 0.06)), 4))
    if k == 3:
        fr.append(round(float(rng.uniform(0.01, 0.06)), 4))
    picks = rng.choice(len(others), size=k - 1, replace=False)
    return [[main, fr[0]]] + [[others[j], fr[i + 1]] for i, j in enumerate(picks)]


def _products(kind: str, days: np.ndarray, rng: np.random.Generator) -> list[str]:
    out = []
    for d in days:
        dt = np.datetime64(int(d), "D").astype(object)
        ymd = dt.strftime("%Y%m%d")
        hh = f"{int(rng.integers(9, 18)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}"
        if kind == "s2":
            out.append(f"S2{'AB'[int(d) % 2]}_MSIL2A_{ymd}T{hh}_N0213_R065_T32UNC_{ymd}T115419")
        else:
            orbit = f"{int(rng.integers(10000, 40000)):06d}"
            out.append(f"S1{'AB'[int(d) % 2]}_IW_GRDH_1SDV_{ymd}T{hh}_{ymd}T{hh[:4]}59_{orbit}_0382D5_360A")
    return out


def _series_days(year: int, t: int, rng: np.random.Generator) -> np.ndarray:
    start = (np.datetime64(f"{year}-01-01") - np.datetime64("1970-01-01")).astype(int)
    return np.sort(start + rng.choice(365, size=t, replace=False)).astype(np.int64)


def _write_aerial(path: str, data: np.ndarray, x0: float, y0: float) -> None:
    stats = "".join(
        f'<Item name="STATISTICS_MEAN" sample="{b}">{data[b].mean():.4f}</Item>'
        f'<Item name="STATISTICS_MAXIMUM" sample="{b}">{int(data[b].max())}</Item>'
        f'<Item name="STATISTICS_MINIMUM" sample="{b}">{int(data[b].min())}</Item>' for b in range(4))
    tifffile.imwrite(
        path, np.ascontiguousarray(data.transpose(1, 2, 0)), photometric="rgb", planarconfig="contig",
        extrasamples=(2,), rowsperstrip=6, compression=None, metadata=None,
        extratags=[(33550, 12, 3, (0.2, 0.2, 0.0)), (33922, 12, 6, (0.0, 0.0, 0.0, x0, y0, 0.0)),
                   (34735, 3, len(_GEOKEYS), _GEOKEYS), (42112, 2, 0, f"<GDALMetadata>{stats}</GDALMetadata>"),
                   (42113, 2, 0, "-9999")])


def _write_mono(root: str, name: str, s2: np.ndarray, x0: float, y0: float, rng: np.random.Generator) -> None:
    tr = Affine(10, 0, x0, 0, -10, y0)
    prof = dict(driver="GTiff", height=PIX, width=PIX, crs="EPSG:32632", transform=tr)
    vv = rng.uniform(0.01, 0.3, (PIX, PIX)).astype(np.float32)
    vh = (vv * rng.uniform(0.1, 0.4, (PIX, PIX))).astype(np.float32)
    with rasterio.open(os.path.join(root, "s1", "60m", f"{name}.tif"), "w", count=3, dtype="float32",
                       nodata=-9999, **prof) as ds:
        ds.write(np.stack([vv, vh, vv / vh]))
    # original single-date order: B02 B03 B04 B08 B05 B06 B07 B8A B11 B12 B01 B09
    last = s2[-1]
    s2_12 = np.concatenate([last[[0, 1, 2, 6, 3, 4, 5, 7, 8, 9]], last[[0, 6]] * 0.8]).astype(np.uint16)
    with rasterio.open(os.path.join(root, "s2", "60m", f"{name}.tif"), "w", count=12, dtype="uint16",
                       **prof) as ds:
        ds.write(s2_12)


VARIANTS = {"hf": "the Hugging Face release (sentinel-ts/{stem}_{year}.h5)",
            "anysat": "AnySat's re-packaged copy (sentinel/{stem}.h5, derived .pth)"}


def write_sample(root: str, tiles: int | None = None, seed: int = 0, layout: str = "hf",
                 variant: str | None = None) -> None:
    """Write ``tiles`` (default 6) TreeSatAI-TS patches under ``root`` (``layout`` "hf" or "anysat")."""
    layout = variant or layout  # a variant is a layout of the same files
    if layout not in ("hf", "anysat"):
        raise ValueError(f"unknown treesatai-ts variant {layout!r}; known: {', '.join(VARIANTS)}")
    n = 6 if tiles is None else int(tiles)
    rng = np.random.default_rng(seed)
    names = _names(n)
    dirs = ["aerial", "labels", "split", "s1/60m", "s2/60m"]
    dirs += ["sentinel-ts"] if layout == "hf" else ["sentinel", "s1-asc", "s1-des"]
    for d in dirs:
        os.makedirs(os.path.join(root, d), exist_ok=True)

    labels = {}
    for i, name in enumerate(names):
        labels[f"{name}.tif"] = lab = _labels(name, rng)
        main = TREESAT_CLASSES.index(lab[0][0])
        # planted signal: the dominant genus shifts NIR (B08, B8A and the aerial IR band)
        nir_shift = 150.0 * (main - 7)
        year = 2019 + i % 2
        x0, y0 = 565642.6 + 500.0 * i, 5770980.4 - 300.0 * (i % 3)

        base = rng.integers(90, 150, size=(4, 1, 1))
        aerial = base + rng.normal(0, 12, (4, AERIAL, AERIAL))
        aerial[0] += 5.0 * (main - 7) + 40
        _write_aerial(os.path.join(root, "aerial", f"{name}.tif"), np.clip(aerial, 0, 255).astype(np.uint8), x0, y0)

        t_s, t_a, t_d = T_S2[i % 3], T_ASC[(i + 1) % 3], T_DES[i % 2]
        refl = np.array([400, 700, 500, 1100, 2300, 2700, 2900, 3000, 1700, 900], np.float64)
        s2 = refl[None, :, None, None] + rng.normal(0, 80, (t_s, 10, PIX, PIX))
        s2[:, 6:8] += nir_shift
        for genus, fraction in lab:
            s2 += SIGNATURE * fraction * GENUS_CODES[TREESAT_CLASSES.index(genus)][None, :, None, None]
        s2 = np.clip(np.rint(s2), 1, 15000).astype(np.float32)
        masks = np.zeros((t_s, 2, PIX, PIX), np.float32)
        masks[:, 1] = rng.choice([0, 0, 0, 5, 80], size=(t_s, PIX, PIX))  # some cloudy pixels
        if layout == "anysat" or i == 4:  # AnySat's copy pads the mask to 10 channels (channels 2.. zero)
            masks = np.concatenate([masks, np.zeros((t_s, 8, PIX, PIX), np.float32)], axis=1)
        s1 = {}
        for orbit, t in (("asc", t_a), ("des", t_d)):
            vv = rng.uniform(0.01, 0.4, (t, 1, PIX, PIX))
            arr = np.concatenate([vv, vv * rng.uniform(0.1, 0.4, (t, 1, PIX, PIX))], axis=1).astype(np.float32)
            if orbit == "des" and i == 1:  # NaN and exact zeros occur in the real S1 series
                arr[0, :, 0, :3] = np.nan
                arr[-1, 1, 5, 5] = 0.0
            s1[orbit] = arr

        h5rel = f"sentinel-ts/{name}_{year}.h5" if layout == "hf" else f"sentinel/{name}.h5"
        sdt = h5py.string_dtype("utf-8")
        with h5py.File(os.path.join(root, h5rel), "w") as h5:
            for orbit in ("asc", "des"):
                h5.create_dataset(f"sen-1-{orbit}-data", data=s1[orbit])
                days = _series_days(year, s1[orbit].shape[0], rng)
                h5.create_dataset(f"sen-1-{orbit}-products", data=_products("s1", days, rng), dtype=sdt)
            h5.create_dataset("sen-2-data", data=s2)
            h5.create_dataset("sen-2-masks", data=masks)
            h5.create_dataset("sen-2-products", data=_products("s2", _series_days(year, t_s, rng), rng), dtype=sdt)
        if layout == "anysat":
            import torch

            for orbit in ("asc", "des"):
                a = s1[orbit]
                ratio = np.clip(a[:, :1] / (a[:, 1:2] + 1e-10), -1e4, 1e4)
                torch.save(torch.from_numpy(np.concatenate([a, ratio], axis=1)),
                           os.path.join(root, f"s1-{orbit}", f"{name}.pth"))
        _write_mono(root, name, s2, x0, y0, rng)

    with open(os.path.join(root, "labels", "TreeSatBA_v9_60m_multi_labels.json"), "w") as f:
        json.dump(labels, f)
    n_val = max(1, round(0.15 * n)) if n >= 3 else 0
    n_test = max(1, round(0.15 * n)) if n >= 3 else 0
    order = list(rng.permutation(n))
    splits = {"val": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}
    for split, idx in splits.items():
        text = "".join(f"{names[j]}.tif\n" for j in sorted(idx))
        for folder in ("", "split"):
            with open(os.path.join(root, folder, f"{split}_filenames.lst"), "w") as f:
                f.write(text)
