"""Journal output: native protocol over a real AF_UNIX datagram socket."""

from __future__ import annotations

import logging
import socket
import struct
from pathlib import Path

from fitsflow.core.logs import JournalHandler, encode_journal


def parse_journal(data: bytes) -> dict[str, str]:
    out, i = {}, 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            out[k.decode()] = v.decode()
            i = nl + 1
        else:
            (n,) = struct.unpack("<Q", data[nl + 1:nl + 9])
            out[line.decode()] = data[nl + 9:nl + 9 + n].decode()
            i = nl + 9 + n + 1
    return out


def test_encode_multiline() -> None:
    assert parse_journal(encode_journal({"A": "1", "B": "x\ny"})) == {"A": "1", "B": "x\ny"}


def test_handler_sends_structured_fields(tmp_path: Path) -> None:
    path = str(tmp_path / "journal.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(5)
    log = logging.getLogger("fitsflow.test.journal")
    log.propagate = False
    handler = JournalHandler("fitsflow-forwarder", "forwarder", socket_path=path)
    log.addHandler(handler)
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            log.error("cannot write %s", "x.fits", exc_info=True, extra={"IMAGE": "IMG1", "MSGTYPE": "FORWARD_IMAGE"})
        fields = parse_journal(server.recv(65536))
    finally:
        log.removeHandler(handler)
        server.close()
    assert fields["MESSAGE"].startswith("cannot write x.fits\nTraceback")
    assert fields["PRIORITY"] == "3"
    assert fields["IMAGE"] == "IMG1" and fields["MSGTYPE"] == "FORWARD_IMAGE"
    assert fields["SYSLOG_IDENTIFIER"] == "fitsflow-forwarder" and fields["FITSFLOW_DAEMON"] == "forwarder"
