"""Text values of FITS keywords that may be long (lists of rows, of keywords).

A string value longer than a card holds (68 characters) is written by astropy as a long
string over CONTINUE cards (FITS 4.0, section 4.2.1.2) — nothing is cut silently. A list that
could grow without bound is still capped, at an item boundary and with a visible ``...``, so
one pathological readout cannot make a header of thousands of cards.
"""

from __future__ import annotations

from typing import Iterable

from astropy.io import fits

#: Characters of a string value one card holds.
CARD_TEXT = 68
#: Characters of one listed value at most (about 60 CONTINUE cards).
LIST_LIMIT = 4000


def listed(items: Iterable[str], limit: int = LIST_LIMIT) -> str:
    """``items`` joined by commas; when longer than ``limit``, the items that fit and ``...``."""
    out: list[str] = []
    length = 0
    for item in items:
        add = len(item) + (1 if out else 0)
        if length + add > limit - 4:  # room for ",..."
            return ",".join(out + ["..."])
        out.append(item)
        length += add
    return ",".join(out)


def declare_long_strings(header: fits.Header) -> None:
    """Add LONGSTRN = 'OGIP 1.0' to a header that has a string value over CONTINUE cards: the
    convention's own declaration, which fitsverify asks for."""
    if "LONGSTRN" not in header and any(isinstance(v, str) and len(v) > CARD_TEXT for v in header.values()):
        header["LONGSTRN"] = ("OGIP 1.0", "The OGIP long string convention may be used")
