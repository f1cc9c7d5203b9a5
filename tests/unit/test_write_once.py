"""Pixels written once: the receiver stores a readout in the FITS layout with per-stripe
sums; the forwarder finishes that very file (headers in the room, checksums from the sums)
and links it, or writes the same bytes as a copy where it must."""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from fitsflow.core import rawstore
from fitsflow.core.checksum import file_crc32, file_crc32_adler32
from fitsflow.core.headerstore import ImageHeader
from fitsflow.core.rawstore import DATA_OFFSET, DirectIO, SensorMeta, SensorWriter, raw_path, read_pixels
from fitsflow.core.spead_format import PIXEL_DTYPES, stripe_bounds
from fitsflow.forwarder.fitswriter import NotLinkable, build_hdus, shape_only, write_copy, write_linked

ROWS, COLS, STRIPES = 301, 203, 5
HEADER = ImageHeader("IMG_1", [("RA", 10.5, "ra"), ("FILTER", "r", "f")])
DATA_ID = {"obs_day": "20261121"}


def pixels(dtype: str) -> np.ndarray:
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    rng = np.random.default_rng(11)
    if info is None:
        return rng.normal(0, 1e4, size=(ROWS, COLS)).astype(dtype)
    return rng.integers(info.min, info.max, size=(ROWS, COLS), endpoint=True).astype(dtype)


def store(root: Path, data: np.ndarray, skip: tuple[int, ...] = (), restart_after: int = 2,
          direct_io: bool = False) -> SensorMeta:
    """Store ``data`` stripe by stripe, out of order, with a restart (journal resume) midway."""
    meta = SensorMeta("IMG_1", 1, "G", 0, "R22", "S00", ROWS, COLS, data.dtype.str, 0.0, 0.0, STRIPES,
                      received_at=1.7e9, data_offset=DATA_OFFSET)
    policy = DirectIO() if direct_io else None  # the receiver's: shared by its writers
    writer = SensorWriter(root, meta, direct_io=policy)
    for n, i in enumerate(i for i in (3, 0, 4, 1, 2) if i not in skip):
        if n == restart_after:
            writer.close()
            writer = SensorWriter(root, SensorMeta(**{**meta.__dict__}), direct_io=policy)
        start, end = stripe_bounds(ROWS, STRIPES, i)
        assert writer.write_stripe(i, start, data[start:end].reshape(-1))
    return writer.finish()


def check(path: Path, written, data: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    assert written.size == path.stat().st_size and written.size % 2880 == 0
    assert written.checksum == file_crc32(path)
    # the Adler-32 Rucio gets, combined from the stripes' sums as the CRC is
    assert written.adler32 == file_crc32_adler32(path)[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # astropy warns on a CHECKSUM/DATASUM mismatch: fail instead
        with fits.open(path, checksum=True) as hdul:
            assert np.array_equal(hdul[1].data, data)
            assert hdul[1].header["DETNAME"] == "R22_S00"
    verify = subprocess.run(["fitsverify", "-q", str(path)], capture_output=True, text=True)
    assert "OK" in verify.stdout, verify.stdout + verify.stderr


@pytest.mark.parametrize("dtype", sorted(PIXEL_DTYPES))
def test_the_stored_readout_becomes_the_file(tmp_path: Path, dtype: str) -> None:
    raw, incoming, copies = tmp_path / "raw", tmp_path / "incoming", tmp_path / "copies"
    for d in (raw, incoming, copies):
        d.mkdir()
    data = pixels(dtype)
    meta = store(raw, data)
    assert np.array_equal(read_pixels(raw, meta), data)
    # The copy first (the path of a reassignment), then the file itself: the same bytes.
    copy = write_copy(raw_path(raw, meta), copies, "f.fits", build_hdus(HEADER, meta, shape_only(meta), "f.fits",
                                                                        DATA_ID), meta)
    linked = write_linked(raw_path(raw, meta), incoming, "f.fits",
                          build_hdus(HEADER, meta, shape_only(meta), "f.fits", DATA_ID), meta)
    assert os.path.samefile(linked.path, raw_path(raw, meta))  # no second copy of the pixels
    for written in (linked, copy):
        check(written.path, written, data)
    assert copy.path.read_bytes() == linked.path.read_bytes()
    # Handed on: never written again. A second forwarder given the sensor copies it.
    with pytest.raises(NotLinkable, match="2 links"):
        write_linked(raw_path(raw, meta), copies, "g.fits", build_hdus(HEADER, meta, shape_only(meta), "g.fits",
                                                                       DATA_ID), meta)


def test_a_partial_readout_has_zeros_and_valid_sums(tmp_path: Path) -> None:
    data = pixels("<i4")
    meta = store(tmp_path, data, skip=(1,))
    start, end = stripe_bounds(ROWS, STRIPES, 1)
    assert meta.partial and meta.missing_rows == [[start, end]]
    expected = data.copy()
    expected[start:end] = 0
    (tmp_path / "in").mkdir()
    written = write_linked(raw_path(tmp_path, meta), tmp_path / "in", "f.fits",
                           build_hdus(HEADER, meta, shape_only(meta), "f.fits", DATA_ID), meta)
    check(written.path, written, expected)


def test_a_refilled_readout_is_summed_from_its_file(tmp_path: Path) -> None:
    """A refill (the camera re-sends a stripe a published partial sensor lacks) copies the
    .raw: the stripes already there have no sums, the finish reads them back."""
    data = pixels("<u2")
    partial = store(tmp_path, data, skip=(2,))
    writer = SensorWriter.refill(tmp_path, partial)
    start, end = stripe_bounds(ROWS, STRIPES, 2)
    assert writer.write_stripe(2, start, data[start:end].reshape(-1))
    meta = writer.finish()
    assert not meta.partial and meta.inode != partial.inode
    (tmp_path / "in").mkdir()
    written = write_linked(raw_path(tmp_path, meta), tmp_path / "in", "f.fits",
                           build_hdus(HEADER, meta, shape_only(meta), "f.fits", DATA_ID), meta)
    check(written.path, written, data)


def test_what_cannot_be_linked_is_copied_with_a_reason(tmp_path: Path) -> None:
    data = pixels("<f4")
    meta = store(tmp_path, data)
    (tmp_path / "in").mkdir()
    big = ImageHeader("IMG_1", [(f"KEY{i}", i, "a card") for i in range(400)])  # > the primary's room
    with pytest.raises(NotLinkable, match="larger than the room"):
        write_linked(raw_path(tmp_path, meta), tmp_path / "in", "f.fits",
                     build_hdus(big, meta, shape_only(meta), "f.fits", DATA_ID), meta)
    assert os.stat(raw_path(tmp_path, meta)).st_nlink == 1 and not (tmp_path / "in" / "f.fits").exists()
    copy = write_copy(raw_path(tmp_path, meta), tmp_path / "in", "f.fits",
                      build_hdus(big, meta, shape_only(meta), "f.fits", DATA_ID), meta)
    check(copy.path, copy, data)
    # A .raw that is not the one its metadata describes (replaced by a refill) is not linked.
    stale = SensorMeta(**{**meta.__dict__, "inode": meta.inode + 1})
    with pytest.raises(NotLinkable, match="not the file"):
        write_linked(raw_path(tmp_path, meta), tmp_path / "in", "g.fits",
                     build_hdus(HEADER, stale, shape_only(stale), "g.fits", DATA_ID), stale)


@pytest.mark.parametrize("dtype", ["<u2", "<i4"])
def test_stripes_written_in_chunks_sum_as_a_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  dtype: str) -> None:
    """A stripe is encoded and summed a chunk at a time, chunks ending on 4 KiB boundaries of
    the file: stripes that start inside a 32-bit word (2-byte pixels, odd row lengths) still
    add up to the data unit's DATASUM and CRC."""
    monkeypatch.setattr(rawstore, "ENCODE_CHUNK_BYTES", 1002)  # the smallest chunk: one block
    data = pixels(dtype)
    meta = store(tmp_path, data)
    (tmp_path / "in").mkdir()
    written = write_linked(raw_path(tmp_path, meta), tmp_path / "in", "f.fits",
                           build_hdus(HEADER, meta, shape_only(meta), "f.fits", DATA_ID), meta)
    check(written.path, written, data)


def test_a_journal_of_an_older_fitsflow_is_summed_from_the_file(tmp_path: Path) -> None:
    """Journal lines without the Adler-32 (written before it was summed): the finish reads the
    data unit back for all three sums; a readout published by it has no Adler-32, and the
    forwarder announces none (the ingest then sums the file)."""
    data = pixels("<i4")
    meta = SensorMeta("IMG_1", 1, "G", 0, "R22", "S00", ROWS, COLS, data.dtype.str, 0.0, 0.0, STRIPES,
                      received_at=1.7e9, data_offset=DATA_OFFSET)
    writer = SensorWriter(tmp_path, meta)
    for i in (0, 1):
        start, end = stripe_bounds(ROWS, STRIPES, i)
        writer.write_stripe(i, start, data[start:end].reshape(-1))
    writer.close()
    journal = tmp_path / "IMG_1" / ".R22_S00.stripes"
    journal.write_text("".join(" ".join(line.split()[:3]) + "\n" for line in journal.read_text().splitlines()))
    writer = SensorWriter(tmp_path, SensorMeta(**{**meta.__dict__}))
    for i in (2, 3, 4):
        start, end = stripe_bounds(ROWS, STRIPES, i)
        writer.write_stripe(i, start, data[start:end].reshape(-1))
    finished = writer.finish()
    assert finished.data_adler32 is not None
    (tmp_path / "in").mkdir()
    written = write_linked(raw_path(tmp_path, finished), tmp_path / "in", "f.fits",
                           build_hdus(HEADER, finished, shape_only(finished), "f.fits", DATA_ID), finished)
    check(written.path, written, data)
    old = SensorMeta(**{**finished.__dict__, "data_adler32": None})
    (tmp_path / "in2").mkdir()
    os.unlink(written.path)
    assert write_linked(raw_path(tmp_path, old), tmp_path / "in2", "f.fits",
                        build_hdus(HEADER, old, shape_only(old), "f.fits", DATA_ID), old).adler32 is None


@pytest.mark.parametrize("dtype", sorted(PIXEL_DTYPES | {">u4", ">i2", "|u1"}))
def test_encoding_into_a_reused_buffer_gives_the_fits_bytes(dtype: str) -> None:
    """The receiver encodes each chunk into its thread's buffer (no new array per chunk):
    big-endian, unsigned integers as signed ones offset by BZERO, whatever the buffer held
    and whatever the input's byte order (numpy's own conversions as the reference)."""
    from fitsflow.core.rawstore import encoded_dtype, fits_encode_into, fits_encoded
    data = pixels(dtype.replace(">", "<").replace("|", "<")).astype(dtype).reshape(-1)
    kind, size = np.dtype(dtype).kind, np.dtype(dtype).itemsize
    if kind == "u" and size > 1:
        expected = (data.astype(np.int64) - 2 ** (8 * size - 1)).astype(f">i{size}")
    else:
        expected = data.astype(np.dtype(dtype).newbyteorder(">"))
    buffer = np.full((data.size + 7) * size, 0x5A, dtype=np.uint8).view(encoded_dtype(dtype))
    out = fits_encode_into(data, buffer)
    assert out.dtype == expected.dtype and out.tobytes() == expected.tobytes()
    assert np.shares_memory(out, buffer)
    square = pixels(dtype.replace(">", "<").replace("|", "<")).astype(dtype)  # 2-D, as readouts are
    assert fits_encoded(square).tobytes() == fits_encode_into(square.reshape(-1), buffer).tobytes()


@pytest.mark.parametrize("dtype", sorted(PIXEL_DTYPES))
def test_direct_io_writes_whole_blocks_aligned_and_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 dtype: str) -> None:
    """With direct_io, each stripe's whole 4 KiB blocks go through O_DIRECT, aligned in the
    file and in memory (the kernel refuses anything else with EINVAL, which would turn the
    writer back to the page cache), and only the partial blocks at a stripe's two ends go
    through the page cache. The file is the one the page cache path writes, byte for byte
    and sum for sum, and becomes a valid FITS file. Stripes here start inside blocks and
    inside 32-bit words (odd row lengths)."""
    if not rawstore.direct_io_supported(tmp_path):
        pytest.skip(f"the filesystem of {tmp_path} refuses O_DIRECT")
    writes: list[tuple[bool, int, int, int]] = []  # (direct, offset, length, address)
    real = rawstore._pwrite_all

    def recording(fd: int, data: memoryview, offset: int) -> None:
        direct = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
        writes.append((direct, offset, len(data), np.frombuffer(data, np.uint8).ctypes.data))
        real(fd, data, offset)

    monkeypatch.setattr(rawstore, "_pwrite_all", recording)
    data = pixels(dtype)
    (tmp_path / "direct").mkdir(), (tmp_path / "cached").mkdir()
    direct = store(tmp_path / "direct", data, direct_io=True)
    direct_writes, writes[:] = list(writes), []
    cached = store(tmp_path / "cached", data)
    assert not any(d for d, *_ in writes)  # the page cache path never writes directly
    blocks = [(off, n, addr) for d, off, n, addr in direct_writes if d]
    assert blocks, "no stripe was written with O_DIRECT"
    assert all(off % 4096 == 0 and n % 4096 == 0 and addr % 4096 == 0 for off, n, addr in blocks)
    cached_bytes = sum(n for d, _, n, _ in direct_writes if not d)
    assert cached_bytes < 2 * STRIPES * 4096  # at most the two partial blocks of each stripe
    assert sum(n for _, n, _ in blocks) + cached_bytes == data.nbytes
    assert raw_path(tmp_path / "direct", direct).read_bytes() == raw_path(tmp_path / "cached", cached).read_bytes()
    assert (direct.datasum, direct.data_crc, direct.data_adler32) == (cached.datasum, cached.data_crc,
                                                                      cached.data_adler32)
    incoming = tmp_path / "in"
    incoming.mkdir()
    written = write_linked(raw_path(tmp_path / "direct", direct), incoming, "f.fits",
                           build_hdus(HEADER, direct, shape_only(direct), "f.fits", DATA_ID), direct)
    check(written.path, written, data)


def test_direct_io_refused_falls_back_to_the_page_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A filesystem that refuses O_DIRECT at open (EINVAL), or a device that refuses our
    alignment at write (EINVAL): the stripes go through the page cache, and the file is
    whole and right. The refusal is asked and told once per filesystem, not per writer.
    Another error of a direct write (a full disk) is the caller's, as any."""
    import errno

    caplog.set_level(logging.WARNING, logger=rawstore.__name__)
    opened: list[str] = []

    data = pixels("<u2")
    real_open, real_pwrite = os.open, os.pwrite

    def no_direct_open(path, flags, *args):  # type: ignore[no-untyped-def]
        if flags & os.O_DIRECT:
            opened.append(str(path))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    with monkeypatch.context() as m:
        m.setattr(os, "open", no_direct_open)
        (tmp_path / "a").mkdir()
        at_open = store(tmp_path / "a", data, direct_io=True)
    assert len(opened) == 1  # the second writer (store() restarts it) does not ask again
    told = [r for r in caplog.records if "refuses O_DIRECT" in r.getMessage()]
    assert len(told) == 1 and told[0].levelno == logging.WARNING

    refused: list[int] = []

    def misaligned(fd: int, buf, offset: int) -> int:  # type: ignore[no-untyped-def]
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, buf, offset)

    with monkeypatch.context() as m:
        m.setattr(os, "pwrite", misaligned)
        (tmp_path / "b").mkdir()
        at_write = store(tmp_path / "b", data, direct_io=True)
    if rawstore.direct_io_supported(tmp_path):
        assert refused, "no direct write was tried"
        assert len(refused) == 1  # once: the restarted writer does not open O_DIRECT again
        assert len([r for r in caplog.records if "O_DIRECT write was refused" in r.getMessage()]) == 1
    (tmp_path / "c").mkdir()
    cached = store(tmp_path / "c", data)
    expected = raw_path(tmp_path / "c", cached).read_bytes()
    assert raw_path(tmp_path / "a", at_open).read_bytes() == expected
    assert raw_path(tmp_path / "b", at_write).read_bytes() == expected
    assert at_write.data_crc == at_open.data_crc == cached.data_crc

    if not rawstore.direct_io_supported(tmp_path):
        return

    def full(fd: int, buf, offset: int) -> int:  # type: ignore[no-untyped-def]
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, buf, offset)

    meta = SensorMeta("IMG_2", 2, "G", 0, "R22", "S00", ROWS, COLS, data.dtype.str, 0.0, 0.0, STRIPES,
                      data_offset=DATA_OFFSET)
    writer = SensorWriter(tmp_path, meta, direct_io=DirectIO())
    start, end = stripe_bounds(ROWS, STRIPES, 0)
    with monkeypatch.context() as m:
        m.setattr(os, "pwrite", full)
        with pytest.raises(OSError, match="No space"):
            writer.write_stripe(0, start, data[start:end].reshape(-1))
    assert writer.write_stripe(0, start, data[start:end].reshape(-1))  # the space is back: stored, directly
    assert writer._direct
    writer.close()


def test_primary_headers_from_the_image_template_are_the_card_by_card_ones() -> None:
    """build_hdus copies a per-image template of the primary header and sets DATE and
    FILENAME: byte for byte the header built card by card, for every sensor of an image
    (the template's first use and its copies), a long file name (LONGSTRN for that file
    alone), a partial header, and an image header that has DATE, FILENAME or a long string
    of its own."""
    import datetime as dt

    from fitsflow.forwarder.fitswriter import build_primary_header

    image = "IMG_1"
    long_text = "x" * 90
    headers = [HEADER, ImageHeader(image, [("DATE", "2000-01-01", "theirs"), ("FILENAME", "theirs.fits", "")]),
               ImageHeader(image, [("NOTE", long_text, "long")], partial=True, missing_keywords=["RA"])]
    for n, header in enumerate(headers):
        for i, sensor in enumerate(("S00", "S01", "S02")):
            meta = SensorMeta(image, 1, "G1", 0, "R22", sensor, 8, 8, "<i4", 1.7e9, 1.7e9 + 1, 1,
                              received_at=1.7e9 + 10 * n + i)
            names = [f"{image}_R22_{sensor}.fits", f"{'L' * 70}_{sensor}.fits"]
            for filename in names[::-1] if i == 0 else names:  # the template made for a long name first
                built = build_hdus(header, meta, shape_only(meta), filename, DATA_ID)[0].header
                date = dt.datetime.fromtimestamp(meta.received_at, dt.timezone.utc).strftime(
                    "%Y-%m-%dT%H:%M:%S.%f")[:-3]
                expected = build_primary_header(header, DATA_ID, date, filename)
                assert built.tostring() == expected.tostring(), (n, sensor, filename)
                assert ("LONGSTRN" in built) == (len(filename) > 68 or n == 2)
