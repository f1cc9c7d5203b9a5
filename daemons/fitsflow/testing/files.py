"""Small valid sensor FITS files (as a forwarder writes them) for ingest tests and benches."""

from __future__ import annotations

from pathlib import Path

from fitsflow.camera_sim.pixels import sensor_pixels
from fitsflow.core.headerstore import ImageHeader
from fitsflow.core.layout import sensor_file_name
from fitsflow.core.rawstore import SensorMeta
from fitsflow.forwarder.fitswriter import WrittenFile, build_hdus, write_fits


def make_sensor_file(directory: Path, image: str, raft: str = "R22", sensor: str = "S00", *,
                     instrument: str = "TESTCAM", obs_day: str = "20261121", rows: int = 16, cols: int = 16,
                     seq: int = 1, index: int = 0) -> tuple[WrittenFile, dict]:
    """Write one sensor file into ``directory``; returns it and its data ID."""
    pixels = sensor_pixels(1, seq, index, rows, cols)
    meta = SensorMeta(image, seq, "G1", 0, raft, sensor, rows, cols, "<i4", 1.7e9, 1.7e9 + 1, 1, received_at=1.7e9)
    header = ImageHeader(image, [("INSTRUME", instrument, "Instrument"), ("IMGNAME", image, "Image name"),
                                 ("GROUPID", "G1", "Group"), ("SNAP", 0, "Snap")])
    data_id = {"instrument": instrument, "image": image, "group": "G1", "snap": 0, "raft": raft, "sensor": sensor,
               "obs_day": obs_day}
    name = sensor_file_name(instrument, image, raft, sensor)
    return write_fits(directory, name, build_hdus(header, meta, pixels, name, data_id)), data_id
