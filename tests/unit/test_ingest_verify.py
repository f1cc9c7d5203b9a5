"""What the ingesters check of a file (core/ingest/verify.inspect), with and without the
forwarder's announced CRC-32."""

from __future__ import annotations

from pathlib import Path

import pytest

from fitsflow.core.checksum import file_crc32
from fitsflow.core.handoff import file_identity
from fitsflow.core.ingest.verify import BadFile, inspect
from fitsflow.testing.files import make_sensor_file

IMAGE = "TESTCAM_O_20261121_000001"


def test_a_good_file_passes_with_and_without_announcement(tmp_path: Path) -> None:
    f, data_id = make_sensor_file(tmp_path, IMAGE)
    assert inspect(f.path).data_id == data_id
    assert inspect(f.path, file_crc32(f.path)).data_id == data_id


def test_a_changed_byte_fails_the_announced_crc(tmp_path: Path) -> None:
    f, _ = make_sensor_file(tmp_path, IMAGE)
    announced = file_crc32(f.path)
    raw = bytearray(f.path.read_bytes())
    raw[-100] ^= 0x01
    f.path.write_bytes(bytes(raw))
    with pytest.raises(BadFile, match="differs from the announced"):
        inspect(f.path, announced)


def test_unannounced_files_get_the_fits_checksums_verified(tmp_path: Path) -> None:
    """A file nobody announced (rescan, dropped by hand) is checked by its DATASUM; one whose
    bytes match the forwarder's announced CRC-32 is not summed again (the CRC proves them)."""
    f, _ = make_sensor_file(tmp_path, IMAGE)
    raw = bytearray(f.path.read_bytes())
    raw[-100] ^= 0x01  # pixels no longer match DATASUM
    f.path.write_bytes(bytes(raw))
    with pytest.raises(BadFile, match="DATASUM"):
        inspect(f.path)
    assert inspect(f.path, file_crc32(f.path)).data_id["image"] == IMAGE


def test_the_inode_the_controller_checked_is_not_read_again(tmp_path: Path) -> None:
    """INGEST_REQUEST names the identity the controller checked the CRC for: a staged name
    with that identity is not read again; one whose bytes changed since (new mtime) is."""
    f, data_id = make_sensor_file(tmp_path, IMAGE)
    announced = file_crc32(f.path)
    checked = file_identity(f.path.stat())
    got = inspect(f.path, announced, checked)
    assert got.trusted and got.checksum == announced and got.data_id == data_id
    assert not inspect(f.path, announced, "1:2:3").trusted
    raw = bytearray(f.path.read_bytes())
    raw[-100] ^= 0x01
    f.path.write_bytes(bytes(raw))
    with pytest.raises(BadFile, match="differs from the announced"):
        inspect(f.path, announced, checked)


def test_announced_files_are_read_by_their_headers_alone(tmp_path: Path) -> None:
    """With an announced CRC-32 the ingest reads only the two headers (read_headers): the
    same data ID as the full open; a file cut short, one without an extension and a header
    without END are refused although their bytes match what was announced."""
    f, data_id = make_sensor_file(tmp_path, IMAGE, rows=40, cols=40)
    assert inspect(f.path, file_crc32(f.path)).data_id == inspect(f.path).data_id == data_id
    raw = f.path.read_bytes()

    cut = tmp_path / "cut.fits"
    cut.write_bytes(raw[:-2880])
    with pytest.raises(BadFile, match="truncated"):
        inspect(cut, file_crc32(cut))

    primary_only = tmp_path / "primary.fits"
    end = raw.index(b"END".ljust(80)) // 2880 * 2880 + 2880
    primary_only.write_bytes(raw[:end])
    with pytest.raises(BadFile, match="no END card"):
        inspect(primary_only, file_crc32(primary_only))

    no_end = tmp_path / "noend.fits"
    no_end.write_bytes(b"".join(f"KEY{i:05d}= {i:20d}".ljust(80).encode() for i in range(36 * 101)))
    with pytest.raises(BadFile, match="without END"):
        inspect(no_end, file_crc32(no_end))


def test_header_reading_refuses_what_is_not_a_sensor_file(tmp_path: Path) -> None:
    """A second HDU that is a table, and a primary HDU with data, are refused as metadata
    failures (status 2), whichever way the file is read."""
    import numpy as np
    from astropy.io import fits

    from fitsflow.core.ingest.verify import STATUS_METADATA_FAILURE

    table = tmp_path / "table.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("a", "J", array=[1])])]) \
        .writeto(table, checksum=True)
    with pytest.raises(BadFile, match="not an IMAGE extension") as exc:
        inspect(table, file_crc32(table))
    assert exc.value.status == STATUS_METADATA_FAILURE
    with_data = tmp_path / "data.fits"
    fits.HDUList([fits.PrimaryHDU(np.zeros((4, 4), np.int32)), fits.ImageHDU(np.zeros((4, 4), np.int32))]) \
        .writeto(with_data, checksum=True)
    with pytest.raises(BadFile, match="primary HDU has data"):
        inspect(with_data, file_crc32(with_data))


def test_unparsable_cards_are_a_bad_file_not_a_crash(tmp_path: Path) -> None:
    """A card astropy cannot parse (VerifyError when read) makes the file a BadFile — an axis
    card an ingest failure, a data-ID card a metadata failure — on both reading paths."""
    from fitsflow.core.ingest.verify import STATUS_METADATA_FAILURE

    f, _ = make_sensor_file(tmp_path, IMAGE, rows=40, cols=40)
    raw = f.path.read_bytes()
    ext_start = raw.index(b"XTENSION")
    naxis = raw.index(b"NAXIS   =", ext_start)
    bad_axis = tmp_path / "axis.fits"
    bad_axis.write_bytes(raw[:naxis] + b"NAXIS   = 'two".ljust(80) + raw[naxis + 80:])
    with pytest.raises(BadFile, match="not a valid FITS file"):
        inspect(bad_axis, file_crc32(bad_axis))
    snap = raw.index(b"SNAP    =")
    bad_snap = tmp_path / "snap.fits"
    bad_snap.write_bytes(raw[:snap] + b"SNAP    = 12x4".ljust(80) + raw[snap + 80:])
    with pytest.raises(BadFile, match="metadata") as exc:
        inspect(bad_snap, file_crc32(bad_snap))
    assert exc.value.status == STATUS_METADATA_FAILURE
    with pytest.raises(BadFile, match="CHECKSUM"):  # unannounced: its changed card fails the HDU's CHECKSUM first
        inspect(bad_snap)


def test_blank_cards_do_not_change_what_is_read(tmp_path: Path) -> None:
    """Blank cards — between keywords, or hundreds of them filling the room fitsflow leaves
    for a header before the data unit — are skipped by the header read (they cost most of
    astropy's parse), and the data ID is the same as from the full open."""
    from astropy.io import fits

    f, data_id = make_sensor_file(tmp_path, IMAGE)
    with fits.open(f.path) as hdul:
        hdus = fits.HDUList([fits.PrimaryHDU(header=hdul[0].header.copy()), hdul[1].copy()])
    primary = hdus[0].header
    primary.insert("SNAP", ("", ""))  # a blank card between two keywords of the data ID
    for _ in range(400):
        primary.append(("", ""), bottom=True)
    padded = tmp_path / "padded.fits"
    hdus.writeto(padded, checksum=True)
    assert padded.read_bytes().count(b" " * 80) > 400
    assert inspect(padded, file_crc32(padded)).data_id == inspect(padded).data_id == data_id
