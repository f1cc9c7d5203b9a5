"""The forwarder's single-pass FITS writer against astropy's own writer."""

from __future__ import annotations

import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from fitsflow.core.headerstore import ImageHeader
from fitsflow.core.rawstore import SensorMeta
from fitsflow.core.checksum import file_crc32, file_crc32_adler32
from fitsflow.core.fits_text import LIST_LIMIT, listed
from fitsflow.forwarder.fitswriter import build_hdus, write_fits


@pytest.mark.parametrize("dtype", ["<i4", "<f4", "<u2", "<i2"])
def test_file_matches_astropy_and_verifies(tmp_path: Path, dtype: str) -> None:
    rng = np.random.default_rng(7)
    data = rng.integers(-2**31 if dtype == "<i4" else 0, 2**15, size=(301, 203)).astype(dtype)
    header = ImageHeader("IMG", [("RA", 10.5, "ra"), ("FILTER", "r", "f"), ("UNDEF", None, "missing")])
    meta = SensorMeta("IMG", 1, "G", 0, "R22", "S00", 301, 203, dtype, 0.0, 0.0, 4, received_at=1.7e9)
    written = write_fits(tmp_path, "f.fits", build_hdus(header, meta, data, "f.fits", {"obs_day": "20261121"}))
    assert written.size == written.path.stat().st_size and written.size % 2880 == 0
    assert written.checksum == file_crc32(written.path)
    assert written.adler32 == file_crc32_adler32(written.path)[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checksum mismatch is a warning in astropy: make it fail
        with fits.open(written.path, checksum=True) as hdul:
            assert np.array_equal(hdul[1].data, data)
            ours = hdul[1].header["DATASUM"]
    # astropy's own DATASUM for the same data
    ref = fits.ImageHDU(data=data)
    ref.add_datasum()
    assert ours == ref.header["DATASUM"]
    # the same input twice gives the same bytes (a repeated assignment)
    (tmp_path / "again").mkdir()
    time.sleep(1.01)  # a clock in the output (astropy's default CHECKSUM comment) would show
    again = write_fits(tmp_path / "again", "f.fits", build_hdus(header, meta, data, "f.fits", {"obs_day": "20261121"}))
    assert again.path.read_bytes() == written.path.read_bytes()


def test_long_lists_continue_instead_of_being_cut(tmp_path: Path) -> None:
    """MISSROWS and HDRMISS longer than a card are written whole over CONTINUE cards (a
    standard long string: fitsverify passes); an unbounded list ends visibly in '...'."""
    data = np.zeros((400, 10), dtype="<i4")
    ranges = [[r, r + 2] for r in range(0, 400, 10)]  # 40 ranges: ~330 characters
    meta = SensorMeta("IMG", 1, "G", 0, "R22", "S00", 400, 10, "<i4", 0.0, 0.0, 200, received_at=1.7e9,
                      missing_rows=ranges, partial=True)
    missing = [f"KEYWORD{i}" for i in range(20)]
    header = ImageHeader("IMG", [("HDRPART", True, "partial"), ("HDRMISS", listed(missing), "missing")])
    written = write_fits(tmp_path, "f.fits", build_hdus(header, meta, data, "f.fits", {"obs_day": "20261121"}))
    with fits.open(written.path, checksum=True) as hdul:
        assert hdul[1].header["MISSROWS"] == ",".join(f"{a + 1}:{b}" for a, b in ranges)
        assert hdul[0].header["HDRMISS"].split(",") == missing
    verify = subprocess.run(["fitsverify", "-q", str(written.path)], capture_output=True, text=True)
    assert verify.returncode == 0 and "verification OK" in verify.stdout, verify.stdout + verify.stderr
    capped = listed(str(n) for n in range(100_000))
    assert capped.endswith(",...") and len(capped) <= LIST_LIMIT
    assert capped.split(",")[:-1] == [str(n) for n in range(len(capped.split(",")) - 1)]
