"""File checksums as fitsflow messages carry them: ``crc32:<8 hex digits>``.

CRC-32 (zlib's polynomial; computed with ISA-L where available) catches accidental
corruption between writer and reader at several GB/s;
sha256 runs at ~250 MB/s on CPUs without SHA extensions and would cost more than writing
the file. The FITS CHECKSUM/DATASUM cards inside each file are a second, independent check.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

try:
    # ISA-L's CRC-32 and Adler-32 (python-isal): the same values as zlib's, ~10x (CRC) and
    # ~1.6x (Adler) faster on x86-64 and aarch64 (1.2 and 7 ms per 16 MiB here, zlib 7 and
    # 12). The receiver sums every stripe it stores.
    from isal.isal_zlib import adler32, crc32
except ImportError:  # pragma: no cover - a platform without isal wheels
    from zlib import adler32, crc32

CHUNK = 8 * 1024 * 1024


def file_crc32(path: Path) -> str:
    """``crc32:<8 hex>`` of a file (the hand-off's check: no Adler-32, which would cost a
    second sum over every byte where nobody needs it)."""
    crc = 0
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(CHUNK):
            crc = crc32(chunk, crc)
    return f"crc32:{crc:08x}"


def file_crc32_adler32(path: Path) -> tuple[str, str]:
    """``crc32:<8 hex>`` and the Adler-32 (8 hex digits) of a file, in one read."""
    crc, adler = 0, 1
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(CHUNK):
            crc = crc32(chunk, crc)
            adler = adler32(chunk, adler)
    return f"crc32:{crc:08x}", adler32_hex(adler)


# -- sums of parts ---------------------------------------------------------------------
# The receiver writes each stripe of a sensor where it belongs in the final file and sums
# it while the bytes are in cache; the forwarder then finishes the file's CRC-32 and the
# data unit's DATASUM from those parts without reading the pixels again.

def file_adler32_md5(path: Path) -> tuple[str, str]:
    """The checksums Rucio keeps: adler32 (8 hex digits) and md5, in one read of the file."""
    adler, md5 = 1, hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            adler = adler32(chunk, adler)
            md5.update(chunk)
    return adler32_hex(adler), md5.hexdigest()


def _zlib_combine() -> Callable[[int, int, int], int] | None:
    """zlib's own crc32_combine64 (Python's zlib module does not export it), or None."""
    name = ctypes.util.find_library("z")
    try:
        lib = ctypes.CDLL(name or "libz.so.1")
        fn = lib.crc32_combine64
    except (OSError, AttributeError):
        return None
    fn.restype, fn.argtypes = ctypes.c_ulong, [ctypes.c_ulong, ctypes.c_ulong, ctypes.c_int64]
    return fn


_COMBINE = _zlib_combine()


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of A+B from crc32(A), crc32(B) and len(B) (zlib's crc32_combine)."""
    if len2 <= 0:
        return crc1
    if _COMBINE is not None:
        return int(_COMBINE(crc1, crc2, len2)) & 0xFFFFFFFF
    return _crc32_combine_py(crc1, crc2, len2)


def _gf2_times(mat: list[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _crc32_combine_py(crc1: int, crc2: int, len2: int) -> int:
    """zlib's crc32_combine (GF(2) matrix powers), for a Python built without a shared libz."""
    odd = [0xEDB88320] + [1 << i for i in range(31)]  # the operator for one zero bit
    even = [_gf2_times(odd, odd[i]) for i in range(32)]  # two zero bits
    odd = [_gf2_times(even, even[i]) for i in range(32)]  # four zero bits
    while True:  # apply len2 zero bytes to crc1, squaring the operator as we go
        even = [_gf2_times(odd, odd[i]) for i in range(32)]
        if len2 & 1:
            crc1 = _gf2_times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = [_gf2_times(even, even[i]) for i in range(32)]
        if len2 & 1:
            crc1 = _gf2_times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


def crc32_of_zeros(n: int, crc: int = 0) -> int:
    """CRC-32 continued over ``n`` zero bytes (rows that never arrived, block padding)."""
    zeros = bytes(min(n, CHUNK))
    while n > 0:
        step = min(n, len(zeros))
        crc = crc32(memoryview(zeros)[:step], crc)
        n -= step
    return crc


ADLER_BASE = 65521


def adler32_combine(adler1: int, adler2: int, len2: int) -> int:
    """The Adler-32 of A+B from adler32(A), adler32(B) and len(B) (zlib's adler32_combine:
    the first sum adds up, the second gains len(B) times A's first sum)."""
    if len2 < 0:
        raise ValueError("negative length")
    rem = len2 % ADLER_BASE
    sum1 = adler1 & 0xFFFF
    sum2 = (rem * sum1) % ADLER_BASE
    sum1 = (sum1 + (adler2 & 0xFFFF) + ADLER_BASE - 1) % ADLER_BASE
    sum2 = (sum2 + ((adler1 >> 16) & 0xFFFF) + ((adler2 >> 16) & 0xFFFF) + ADLER_BASE - rem) % ADLER_BASE
    return sum1 | (sum2 << 16)


def adler32_of_zeros(n: int, adler: int = 1) -> int:
    """Adler-32 continued over ``n`` zero bytes (zeros alone: first sum 1, second n)."""
    return adler32_combine(adler, ((n % ADLER_BASE) << 16) | 1, n)


def adler32_hex(value: int) -> str:
    """As Rucio writes it: 8 lower-case hex digits."""
    return f"{value & 0xFFFFFFFF:08x}"


def ones_sum(data: bytes | bytearray | memoryview, offset: int = 0) -> int:
    """The unfolded sum of the big-endian 32-bit words that ``data`` contributes to a FITS
    DATASUM, when it starts ``offset`` bytes into the data unit. Parts of one data unit sum
    independently (a word split between two parts adds up to the whole word), in any order;
    :func:`fold32` turns the total into the DATASUM value."""
    view = memoryview(data).cast("B")
    lead = offset % 4
    total = 0
    if lead:  # the part starts inside a word: its first bytes are that word's low bytes
        head = bytes(view[:4 - lead])
        total += int.from_bytes(bytes(lead) + head.ljust(4 - lead, b"\0"), "big")
        view = view[4 - lead:]
    whole = len(view) // 4 * 4
    words = np.frombuffer(view[:whole], dtype=">u4")
    step = CHUNK // 4
    for start in range(0, words.size, step):
        total += int(np.add.reduce(words[start:start + step], dtype=np.uint64))
    if whole < len(view):
        total += int.from_bytes(bytes(view[whole:]).ljust(4, b"\0"), "big")
    return total


def fold32(total: int) -> int:
    """Fold a sum of words with end-around carry: the FITS 32-bit ones' complement sum."""
    while total >> 32:
        total = (total & 0xFFFFFFFF) + (total >> 32)
    return total
