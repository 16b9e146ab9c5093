"""The sensor registry is complete on its own: a process that only loads a model knows every sensor."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from anysat.sensors import OFFICIAL_SENSORS, SENSORS

# Sensors of the archives pipelines reads, beyond the released model's.
ARCHIVE_SENSORS = ("s1-des", "hls", "l8-sr", "s2-aux", "s2-flag", "s1-so2sat")


def test_archive_sensors_are_registered_by_anysat_alone():
    # A fresh interpreter, as a Ray worker, an embedding actor or an MLflow pyfunc starts.
    code = textwrap.dedent(f"""
        import sys
        import torch
        from anysat import AnySat
        from anysat.sensors import get_sensor

        for key in {ARCHIVE_SENSORS!r}:
            get_sensor(key)
        torch.manual_seed(0)
        model = AnySat.from_size("tiny", sensors=["hls"]).eval()
        x = {{"hls": torch.randn(1, 3, 6, 4, 4), "hls_dates": torch.randint(1, 366, (1, 3))}}
        with torch.inference_mode():
            assert model(x, patch_size=30, output="tile").shape == (1, 256)
        assert "pipelines" not in sys.modules, sorted(m for m in sys.modules if m.startswith("pipelines"))
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith("ok")


def test_official_sensors_are_the_released_models():
    assert OFFICIAL_SENSORS == ("aerial", "aerial-flair", "spot", "naip", "s2", "s1-asc", "s1", "alos", "l7",
                                "l8", "modis")
    assert set(ARCHIVE_SENSORS) <= set(SENSORS) and not set(ARCHIVE_SENSORS) & set(OFFICIAL_SENSORS)


def test_every_register_sensor_call_lives_in_the_sensor_module():
    # One registry: a reader or a dataset module that registered sensors would make them exist only
    # after that module was imported.
    root = Path(__file__).resolve().parents[2]
    callers = [str(p.relative_to(root)) for d in ("anysat", "pipelines", "ray_jobs") for p in (root / d).rglob("*.py")
               if "register_sensor(" in p.read_text() and p != root / "anysat" / "sensors.py"]
    assert callers == []
