"""A kernel packet filter (classic BPF) on the receiver's UDP socket: a packet can no longer
make spead2 allocate what it likes.

spead2 allocates a heap's whole declared ``HEAP_LENGTH`` when its first packet arrives, and
grows an unsized heap to its largest ``PAYLOAD_OFFSET``. One forged packet declaring 2^47
bytes made its worker thread die of ``std::bad_alloc`` ("expect deadlocks!") while the
process lived on, deaf. spead2 has no size limit of its own, so the kernel enforces one
before the packet reaches it: the filter reads the SPEAD header and the first
:data:`MAX_ITEM_POINTERS` item pointers and refuses

- a packet that is not SPEAD version 4 with fitsflow's flavour (64-bit item pointers,
  48-bit heap addresses, docs/spead.md);
- a ``HEAP_LENGTH`` or ``PAYLOAD_OFFSET`` above the limit (``max_heap_bytes`` plus room for
  the descriptors);
- more item pointers than it can inspect.

A refused packet is not dropped silently: the filter trims it to a payload of a length no
SPEAD packet can have (:data:`TRIM_FOREIGN` or :data:`TRIM_OVERSIZE` bytes, shorter than a
SPEAD header), spead2 rejects that as "too small (N bytes)", and the receiver's rejection
counter (stream.RejectedPacketCounter) turns N back into the reason. Heaps without a
``HEAP_LENGTH`` are refused by spead2 itself (``allow_unsized_heaps=False``).
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct

from fitsflow.core.spead_format import HEAP_ADDRESS_BITS

#: Item pointers the filter inspects (a fitsflow heap's first packet carries about 40).
MAX_ITEM_POINTERS = 96
#: Payload lengths a refused packet is cut to; spead2 logs "too small (N bytes)".
TRIM_FOREIGN = 5
TRIM_OVERSIZE = 6
REASONS = {TRIM_FOREIGN: "refused by the packet filter: not SPEAD-64-48 or too many item pointers",
           TRIM_OVERSIZE: "refused by the packet filter: heap size or payload offset above the limit"}

_UDP_HEADER = 8  # a UDP socket's filter sees the datagram from its UDP header on
_SPEAD = _UDP_HEADER
_HEAP_LENGTH_ID, _PAYLOAD_OFFSET_ID = 0x02, 0x03
_ADDRESS_BYTES = HEAP_ADDRESS_BITS // 8

# Classic BPF opcodes (linux/filter.h)
_LD_B_ABS, _LD_H_ABS, _LD_W_ABS = 0x30, 0x28, 0x20
_ST, _LD_MEM = 0x02, 0x60
_ALU_AND_K, _ALU_RSH_K = 0x54, 0x74
_JEQ_K, _JGT_K = 0x15, 0x25
_RET_K = 0x06
_ACCEPT = 0xFFFFFFFF
# A packet with fewer item pointers than its header claims makes a load fall off its end:
# classic BPF then drops it (spead2 would have refused it: "items overflow the packet").
SO_ATTACH_FILTER = 26


def _program(limit: int) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k). Every refusal returns in place, so no conditional
    jump goes further than a few instructions (classic BPF's jump offsets are 8 bits)."""
    if not 0 < limit < 2 ** 32:
        raise ValueError(f"filter limit {limit} must fit in 32 bits")
    foreign, oversize = _UDP_HEADER + TRIM_FOREIGN, _UDP_HEADER + TRIM_OVERSIZE
    prog: list[tuple[int, int, int, int]] = []
    # Header: magic 0x53, version 4, item-pointer width minus heap-address width, address width.
    for offset, value in ((0, 0x53), (1, 4), (2, 8 - _ADDRESS_BYTES), (3, _ADDRESS_BYTES)):
        prog += [(_LD_B_ABS, 0, 0, _SPEAD + offset), (_JEQ_K, 1, 0, value), (_RET_K, 0, 0, foreign)]
    prog += [(_LD_H_ABS, 0, 0, _SPEAD + 6),  # number of item pointers
             (_JGT_K, 0, 1, MAX_ITEM_POINTERS), (_RET_K, 0, 0, foreign),
             (_ST, 0, 0, 0)]  # M[0] = number of item pointers
    for i in range(MAX_ITEM_POINTERS):
        here = _SPEAD + 8 + 8 * i
        prog += [
            (_LD_MEM, 0, 0, 0), (_JGT_K, 1, 0, i), (_RET_K, 0, 0, _ACCEPT),  # no pointer i: all seen
            (_LD_W_ABS, 0, 0, here),  # immediate bit, 15-bit id, top 16 bits of the 48-bit value
            (_ALU_RSH_K, 0, 0, 16), (_ALU_AND_K, 0, 0, 0x7FFF),
            (_JEQ_K, 1, 0, _HEAP_LENGTH_ID), (_JEQ_K, 0, 7, _PAYLOAD_OFFSET_ID),
            (_LD_W_ABS, 0, 0, here), (_ALU_AND_K, 0, 0, 0xFFFF),
            (_JEQ_K, 1, 0, 0), (_RET_K, 0, 0, oversize),  # value ≥ 2^32
            (_LD_W_ABS, 0, 0, here + 4), (_JGT_K, 0, 1, limit), (_RET_K, 0, 0, oversize),
        ]
    prog.append((_RET_K, 0, 0, _ACCEPT))
    return prog


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def attach(sock: socket.socket, limit: int) -> None:
    """Attach the filter to ``sock`` (a bound UDP socket); raises OSError if the kernel
    refuses it."""
    program = _program(limit)
    raw = b"".join(struct.pack("HBBI", code, jt, jf, k) for code, jt, jf, k in program)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = _SockFprog(len(program), ctypes.addressof(buf))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))  # type: ignore[arg-type]
    except OSError as exc:
        if exc.errno == errno.ENOMEM:
            # The kernel charges a socket's filter to net.core.optmem_max: older kernels'
            # default (20480 bytes: Debian 12, EL9) is too small for this program.
            raise OSError(errno.ENOMEM, f"the kernel refused the packet filter ({len(program)} instructions): "
                          f"net.core.optmem_max is {_optmem_max()} bytes; fitsflow-receiver's sysctl.d "
                          f"drop-in (90-fitsflow-receiver.conf) raises it to 131072: run "
                          f"'systemctl restart systemd-sysctl'") from None
        raise


def _optmem_max() -> str:
    try:
        with open("/proc/sys/net/core/optmem_max") as fh:
            return fh.read().strip()
    except OSError:
        return "unknown"


def reason_of(spead2_message: str) -> str | None:
    """The filter's reason for a spead2 log line about a packet it trimmed, else None."""
    for length, reason in REASONS.items():
        if f"too small ({length} bytes)" in spead2_message:
            return reason
    return None
