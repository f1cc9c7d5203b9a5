"""File checksums as fitsflow messages carry them: ``crc32:<8 hex digits>``.

CRC-32 (zlib) catches accidental corruption between writer and reader at ~1.6 GB/s;
sha256 runs at ~250 MB/s on CPUs without SHA extensions and would cost more than writing
the file. The FITS CHECKSUM/DATASUM cards inside each file are a second, independent check.
"""

from __future__ import annotations

import zlib
from pathlib import Path

CHUNK = 8 * 1024 * 1024


def file_crc32(path: Path) -> str:
    crc = 0
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(CHUNK):
            crc = zlib.crc32(chunk, crc)
    return f"crc32:{crc:08x}"
