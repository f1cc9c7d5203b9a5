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
