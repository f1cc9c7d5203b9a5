"""What goes into an image's header — pure functions of its recorded events and samples.

Standard keywords come from the camera events (DATE-OBS, DATE-END, MJD-OBS, EXPTIME, ...),
times and coordinates through astropy; configured keywords from telemetry samples. The same
code serves the live daemon and the replay mode, so a replayed header equals the live one.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
from dataclasses import dataclass, field
from typing import Any

import astropy.units as u
import numpy as np
from astropy.coordinates import Angle
from astropy.time import Time

from fitsflow.core.fits_text import listed
from fitsflow.core.headerstore import Card, ImageHeader
from fitsflow.header_service.config import HeaderServiceConfig


@dataclass
class Sample:
    """One telemetry sample: its source timestamp (ISO UTC) and values."""

    timestamp: str
    values: dict[str, Any]

    def __post_init__(self) -> None:
        # Parsed once (not a field: not persisted). Every open image is sampled against the
        # history on every telemetry message; parsing there dominated a backlog's CPU time.
        self.t = parse_time(self.timestamp).timestamp()


def add_sample(samples: list[Sample], sample: Sample, keep: int) -> None:
    """Insert ``sample`` in time order (samples may arrive late) and keep the newest ``keep``."""
    bisect.insort_right(samples, sample, key=_sample_time)
    del samples[:-keep]


def _sample_time(sample: Sample) -> float:
    return sample.t


@dataclass
class ImageRecord:
    """Everything known about one image so far (persisted between messages)."""

    image: str
    group: str = ""
    snap: int = 0
    exptime: float = 0.0
    sensors: list[str] = field(default_factory=list)
    #: event name → source timestamp (ISO UTC)
    events: dict[str, str] = field(default_factory=dict)
    #: keyword → value sampled for it
    sampled: dict[str, Any] = field(default_factory=dict)
    written: bool = False


def parse_time(value: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def sample_keywords(rec: ImageRecord, cfg: HeaderServiceConfig, history: dict[str, list[Sample]]) -> bool:
    """Fill keywords whose event has happened from their sample (KeywordSpec: the first at
    or after the event, or the one in force at it) (``history``: each topic's samples in time
    order, as :func:`add_sample` keeps them). A keyword once filled keeps its value: a sample
    that arrives later, whatever its stamp, changes nothing. Returns True if anything was added."""
    added = False
    since: dict[str, float] = {}
    for keyword, spec in cfg.keywords.items():
        if keyword in rec.sampled or spec.event not in rec.events:
            continue
        samples = history.get(spec.topic)
        if not samples:
            continue
        if spec.event not in since:
            since[spec.event] = parse_time(rec.events[spec.event]).timestamp()
        t_event = since[spec.event]
        first = bisect.bisect_left(samples, t_event, key=_sample_time)
        candidates = itertools.islice(samples, first, None)
        if spec.when == "at":  # the latest at or before the event, not too old; else the first after
            last = bisect.bisect_right(samples, t_event, key=_sample_time)
            in_force = itertools.takewhile(lambda s: t_event - s.t <= spec.max_age_s, reversed(samples[:last]))
            candidates = itertools.chain(in_force, itertools.islice(samples, last, None))
        for sample in candidates:
            if spec.field in sample.values:
                rec.sampled[keyword] = sample.values[spec.field]
                added = True
                break
    return added


def missing_keywords(rec: ImageRecord, cfg: HeaderServiceConfig) -> list[str]:
    return sorted(k for k in cfg.keywords if k not in rec.sampled)


def build_header(rec: ImageRecord, cfg: HeaderServiceConfig, instrument: str, now: dt.datetime) -> ImageHeader:
    """The header object of an image from what was collected (partial if keywords are missing)."""
    cards: list[Card] = [
        ("TELESCOP", cfg.telescope, "Telescope"),
        ("INSTRUME", instrument, "Instrument"),
        ("IMGNAME", rec.image, "Image name"),
        ("OBSID", rec.image, "Observation id"),
        ("GROUPID", rec.group, "Group id"),
        ("SNAP", rec.snap, "Snap number in the group"),
        ("EXPTIME", rec.exptime, "Exposure time (s)"),
    ]
    start = rec.events.get("START_INTEGRATION")
    if start:
        t0 = Time(parse_time(start))
        cards += [("DATE-OBS", t0.utc.isot, "Start of exposure (UTC)"),
                  ("MJD-OBS", round(float(t0.mjd), 8), "Modified Julian Date of DATE-OBS"),
                  ("TIMESYS", "UTC", "Time system of DATE-OBS, DATE-END")]
        t_end = t0 + rec.exptime * u.s
        cards += [("DATE-END", t_end.utc.isot, "End of exposure (UTC)"),
                  ("MJD-END", round(float(t_end.mjd), 8), "Modified Julian Date of DATE-END")]
    readout = rec.events.get("END_READOUT")
    if readout:
        cards.append(("DATE-RDO", Time(parse_time(readout)).utc.isot, "End of readout (UTC)"))
    for keyword, spec in cfg.keywords.items():
        value = rec.sampled.get(keyword)
        cards.append((keyword, value, spec.comment))  # None = FITS undefined: the keyword is missing
    if "RA" in rec.sampled and "DEC" in rec.sampled:
        ra = Angle(float(rec.sampled["RA"]), u.deg)
        dec = Angle(float(rec.sampled["DEC"]), u.deg)
        # ICRS has no equinox: EQUINOX applies to FK4/FK5 only (FITS 4.0, section 8.1).
        cards += [("RADESYS", "ICRS", "Frame of RA and DEC"),
                  ("RASTR", ra.to_string(unit=u.hourangle, sep=":", precision=2), "RA at start (hh:mm:ss)"),
                  ("DECSTR", dec.to_string(unit=u.deg, sep=":", precision=1, alwayssign=True),
                   "Dec at start (dd:mm:ss)")]
    if "ELSTART" in rec.sampled:
        alt = float(rec.sampled["ELSTART"])
        if alt > 0:
            secz = 1.0 / float(np.sin(Angle(alt, u.deg).rad))
            cards.append(("AIRMASS", round(secz, 4), "Airmass at start (sec z)"))
    missing = missing_keywords(rec, cfg)
    cards.append(("HDRPART", bool(missing), "Header incomplete: telemetry missing"))
    if missing:
        cards.append(("HDRMISS", listed(missing), "Keywords without telemetry"))
    return ImageHeader(image=rec.image, cards=cards, partial=bool(missing), missing_keywords=missing,
                       written_at=now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
