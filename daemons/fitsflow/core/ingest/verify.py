"""Is a staged file a good FITS file, and whose data is it? Everything in a file comes from
outside, so every field that becomes a path is checked against its pattern."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.utils.exceptions import AstropyUserWarning

from fitsflow.core.checksum import file_crc32
from fitsflow.core.errors import UnsafePath
from fitsflow.core.layout import COMPONENT_NAME, OBS_DAY, check_name

STATUS_OK, STATUS_INGEST_FAILURE, STATUS_METADATA_FAILURE = 0, 1, 2


class BadFile(Exception):
    """A file that cannot be ingested; ``status`` is 1 (ingest failure) or 2 (metadata)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Inspected:
    data_id: dict[str, Any]
    size: int
    checksum: str


def inspect(path: Path, expected_checksum: str | None = None) -> Inspected:
    """Verify ``path`` (FITS structure, CHECKSUM/DATASUM, announced checksum) and read its
    data ID; raises BadFile with the status and reason."""
    checksum = file_crc32(path)
    if expected_checksum and checksum != expected_checksum:
        raise BadFile(STATUS_INGEST_FAILURE, f"checksum {checksum} differs from the announced {expected_checksum}")
    try:
        # astropy reports checksum mismatches and header problems as warnings. They are
        # recorded and judged after the file is closed: turned into exceptions inside
        # fits.open they would leave its file descriptor open.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fits.open(path, checksum=True, memmap=False, lazy_load_hdus=False) as hdul:
                n_hdus = len(hdul)
                primary = hdul[0].header
                ext = hdul[1].header if n_hdus > 1 else None
                if ext is not None:
                    hdul[1].data  # noqa: B018 - reading the data is what verifies DATASUM
    except Exception as exc:  # noqa: BLE001 - astropy raises many types for broken files
        raise BadFile(STATUS_INGEST_FAILURE, f"not a valid FITS file: {type(exc).__name__}: {exc}") from None
    problems = [w for w in caught if issubclass(w.category, (AstropyUserWarning, VerifyWarning))]
    if problems:
        raise BadFile(STATUS_INGEST_FAILURE, f"not a valid FITS file: {problems[0].category.__name__}: "
                                             f"{problems[0].message}")
    if ext is None:
        raise BadFile(STATUS_METADATA_FAILURE, f"{n_hdus} HDU(s); a sensor file has 2")
    try:
        data_id = {"instrument": _text(primary, "INSTRUME"), "image": check_name(_text(primary, "IMGNAME")),
                   "group": _text(primary, "GROUPID"), "snap": _int(primary, "SNAP"),
                   "raft": check_name(_text(ext, "RAFTBAY"), "raft", COMPONENT_NAME),
                   "sensor": check_name(_text(ext, "CCDSLOT"), "sensor", COMPONENT_NAME),
                   "obs_day": check_name(_text(primary, "OBSDAY"), "obs-day", OBS_DAY)}
        check_name(data_id["instrument"], "instrument")
    except (KeyError, ValueError, TypeError, UnsafePath) as exc:
        raise BadFile(STATUS_METADATA_FAILURE, f"metadata: {exc}") from None
    return Inspected(data_id, path.stat().st_size, checksum)


def _text(header: fits.Header, key: str) -> str:
    value = header[key]  # KeyError names the keyword
    if not isinstance(value, str) or not value:
        raise ValueError(f"keyword {key} is not a non-empty string")
    return value


def _int(header: fits.Header, key: str) -> int:
    value = header[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"keyword {key} is not an integer")
    return value
