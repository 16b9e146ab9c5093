"""The one registry of sensors (modalities) AnySat knows.

Everything that depends on a sensor (projector kind and kernel, sub-patch size, band order, whether it
is a time series) is read from here: the model, the store writer and the data loader never hard-code a
sensor. A user adds a new sensor with :func:`register_sensor` and the model builds a projector for it
without code changes::

    from anysat.sensors import Sensor, register_sensor
    register_sensor(Sensor("hls", resolution_m=30, bands=("B02", "B03", "B04", "B8A", "B11", "B12"),
                           time_series=True, projector="ltae", reduce_scale=3, subpatch_m=30, t0=366))

Band tuples are the order the *model* consumes. Some bands are derived by the loader from raw bands
(the S1/ALOS cross-polarisation ratio); :attr:`Sensor.derived` names them so the store can keep only
what the archive holds (lossless) and the loader recomputes the rest exactly as the official code does.
A sensor can also be assembled from *another* stored sensor slot by slot (:class:`SlotSource`): SICKLE
stores Landsat-8 as its 8 Collection-2 bands (``l8-sr``), and the loader places them into the official
11-slot ``l8`` input, zero-filling and masking the slots the archive does not have.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Sensor", "SENSORS", "register_sensor", "get_sensor", "sensor_keys", "DerivedBand", "SlotSource"]


@dataclass(frozen=True)
class DerivedBand:
    """A band computed from two raw bands: ``clamp(num / (den + eps), -clip, clip)``."""

    name: str
    numerator: str
    denominator: str
    eps: float = 1e-10
    clip: float = 1e4


@dataclass(frozen=True)
class SlotSource:
    """How the loader assembles this sensor's input from the bands of another stored sensor.

    ``slots`` pairs (model band, stored band of ``sensor``); a model band not listed is a *filled
    slot*: zero after normalisation and masked invalid, so the LTAE projector sees its pad value there
    (what the official loaders do for channels an archive lacks)."""

    sensor: str
    slots: tuple[tuple[str, str], ...]

    def stored_band(self, model_band: str) -> str | None:
        return dict(self.slots).get(model_band)


@dataclass(frozen=True)
class Sensor:
    key: str
    resolution_m: float
    bands: tuple[str, ...]
    time_series: bool
    projector: Literal["vhr", "ltae"]
    subpatch_m: float
    """Side of one sub-patch token in metres: 2 m aerial, 10 m S2, 30 m ALOS..."""
    kernel: int = 1
    """VHR only: conv kernel = pixels per sub-patch side."""
    reduce_scale: int = 1
    """LTAE only: native pixels are ``reduce_scale`` x 10 m; patches group ``s // reduce_scale`` pixels."""
    t0: int = 367
    """LTAE only: period base of the temporal sinusoid."""
    in_norm: bool = False
    """LTAE only: GroupNorm over channels x time before the temporal attention (official: s2 only)."""
    dropout: float = 0.2
    """LTAE only: dropout of the input/output MLPs (training only)."""
    context: bool = False
    """One token per tile placed before the patch tokens, no positional encoding (MODIS)."""
    derived: tuple[DerivedBand, ...] = field(default_factory=tuple)
    sources: tuple[SlotSource, ...] = field(default_factory=tuple)
    """Other stored sensors this one can be assembled from when a store lacks it (see SlotSource)."""

    @property
    def channels(self) -> int:
        return len(self.bands)

    @property
    def raw_bands(self) -> tuple[str, ...]:
        """Bands an archive must provide; the derived ones are recomputed by the loader."""
        names = {d.name for d in self.derived}
        return tuple(b for b in self.bands if b not in names)

    def subpatches_per_side(self, patch_m: float) -> int:
        """Sub-patch tokens per patch side at patch size ``patch_m`` metres (one for a context sensor)."""
        if self.context:
            return 1
        return max(1, int(patch_m // self.subpatch_m))


_S1_RATIO = DerivedBand("VV/VH", "VV", "VH")
_ALOS_RATIO = DerivedBand("HH/HV", "HH", "HV")
_S2_BANDS = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
# The official SICKLE loader puts Landsat-8 Collection-2 L2 (SR_B1..SR_B7 surface reflectance, ST_B10 surface
# temperature) into the 11 slots of the ``l8`` projector [B8 pan, B1..B7, B9, B10, B11] as
# [pad, SR_B1..SR_B7, pad, ST_B10, pad], the pads masked out: slots 1-7 <- SR_B1..SR_B7, slot 9 (B10, thermal)
# <- ST_B10, slots 0 (B8 pan), 8 (B9 cirrus) and 10 (B11, second thermal) filled and masked.
_L8_FROM_SR = SlotSource("l8-sr", tuple((f"B{i}", f"SR_B{i}") for i in range(1, 8)) + (("B10", "ST_B10"),))

SENSORS: dict[str, Sensor] = {}


def register_sensor(sensor: Sensor, *, overwrite: bool = False) -> Sensor:
    """Add a sensor to the registry (the model then builds a projector for it by key)."""
    if sensor.key in SENSORS and not overwrite:
        if SENSORS[sensor.key] == sensor:
            return sensor
        raise ValueError(f"sensor {sensor.key!r} is already registered with other settings; "
                         "pass overwrite=True to replace it")
    if sensor.projector not in ("vhr", "ltae"):
        raise ValueError(f"sensor {sensor.key!r}: projector must be 'vhr' or 'ltae', got {sensor.projector!r}")
    if sensor.projector == "vhr" and sensor.time_series:
        raise ValueError(f"sensor {sensor.key!r}: the VHR projector takes single-date images")
    if sensor.projector == "ltae" and not sensor.time_series:
        raise ValueError(f"sensor {sensor.key!r}: the LTAE projector takes time series")
    SENSORS[sensor.key] = sensor
    return sensor


def get_sensor(key: str) -> Sensor:
    try:
        return SENSORS[key]
    except KeyError:
        raise ValueError(f"unknown sensor {key!r}; known sensors: {', '.join(sorted(SENSORS))}. "
                         "Add new ones with anysat.sensors.register_sensor().") from None


def sensor_keys() -> list[str]:
    return list(SENSORS)


# The 11 sensors of the released model, in the official projector order of the state dict.
for _s in (
    Sensor("aerial", 0.2, ("NIR", "G", "B", "R"), False, "vhr", subpatch_m=2, kernel=10),
    Sensor("aerial-flair", 0.2, ("R", "G", "B", "NIR", "elevation"), False, "vhr", subpatch_m=2, kernel=10),
    Sensor("spot", 1.0, ("R", "G", "B"), False, "vhr", subpatch_m=10, kernel=10),
    Sensor("naip", 1.25, ("R", "G", "B", "NIR"), False, "vhr", subpatch_m=10, kernel=8),
    Sensor("s2", 10, _S2_BANDS, True, "ltae", subpatch_m=10, in_norm=True, dropout=0.0),
    Sensor("s1-asc", 10, ("VV", "VH"), True, "ltae", subpatch_m=10),
    Sensor("s1", 10, ("VV", "VH", "VV/VH"), True, "ltae", subpatch_m=10, derived=(_S1_RATIO,)),
    Sensor("alos", 30, ("HH", "HV", "HH/HV"), True, "ltae", subpatch_m=30, reduce_scale=3,
           derived=(_ALOS_RATIO,)),
    Sensor("l7", 30, ("B1", "B2", "B3", "B4", "B5", "B7"), True, "ltae", subpatch_m=30, reduce_scale=3),
    Sensor("l8", 10, ("B8", "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B9", "B10", "B11"), True, "ltae",
           subpatch_m=10, t0=366, dropout=0.0, sources=(_L8_FROM_SR,)),
    Sensor("modis", 250, ("B1", "B2", "B3", "B4", "B5", "B6", "B7"), True, "ltae", subpatch_m=250,
           reduce_scale=12, context=True),
):
    register_sensor(_s)

OFFICIAL_SENSORS: tuple[str, ...] = tuple(SENSORS)
"""The sensors the released weights have projectors for (the rest get a new, trained projector)."""

# Sensors of the archives this project reads, beyond the released model's. The model builds a fresh
# projector for any of them by key; "store-only" ones are kept so an archive is stored losslessly but
# no released model consumes them. They live here, not next to the readers, so that a process which
# only loads a model (a Ray worker, an embedding actor, an MLflow pyfunc) knows them too.
for _s in (
    # TreeSatAI-TS and PASTIS-HD also ship the descending Sentinel-1 orbit (store-only).
    Sensor("s1-des", 10, ("VV", "VH"), True, "ltae", subpatch_m=10),
    # HLS Burn Scars: the 6 HLS bands at 30 m. AnySat trains a new LTAE projector for it, with the
    # temporal period base 366 of the paper's HLS setting.
    Sensor("hls", 30, ("B02", "B03", "B04", "B8A", "B11", "B12"), True, "ltae", subpatch_m=30, reduce_scale=3,
           t0=366),
    # Landsat-8 Collection-2 L2 as SICKLE ships it (surface reflectance + surface temperature). SICKLE's
    # loaders nearest-resize every band to the 32 x 32 10 m label grid, so the stored grid is 10 m.
    Sensor("l8-sr", 10, ("SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B7", "ST_B10"), True, "ltae",
           subpatch_m=10, t0=366, dropout=0.0),
    # Store-only: the S2 bands the model's 10-band ``s2`` leaves out (60 m aerosol / water vapour /
    # cirrus), kept so L1C/L2A archives that ship them (Sen1Floods11: 13 bands, SICKLE: B1, B9) stay lossless.
    Sensor("s2-aux", 10, ("B1", "B9", "B10"), True, "ltae", subpatch_m=10),
    # Store-only: TimeSen2Crop's per-date quality flag (0 clear, 1 cloud, 2 shadow, 3 snow).
    Sensor("s2-flag", 10, ("Flag",), True, "ltae", subpatch_m=10),
    # Store-only: So2Sat LCZ42 ``sen1`` as in the file (complex SLC parts, Lee-filtered intensities and
    # covariance); the model's ``s1`` gets channels [2, 0] (real parts of VV and VH), as AnySat does.
    Sensor("s1-so2sat", 10, ("VH_re", "VH_im", "VV_re", "VV_im", "VH_lee", "VV_lee", "C12_re", "C12_im"), True,
           "ltae", subpatch_m=10),
):
    register_sensor(_s)
