"""``[header_service]`` configuration: the keyword map and timing."""

from __future__ import annotations

from dataclasses import dataclass, field

from fitsflow.core.layout import check_name

EVENTS = ("START_INTEGRATION", "END_READOUT", "END_OF_IMAGE_TELEMETRY")


#: ``when`` of a keyword: the first sample stamped at or after the event / the one in force at it
WHEN = ("after", "at")


@dataclass(frozen=True)
class KeywordSpec:
    """``[header_service.keywords.NAME]``: NAME takes ``values[field]`` of a ``topic`` sample:
    with ``when = "after"``, the first one stamped at or after the image's ``event``; with
    ``when = "at"``, the one in force at the event — the latest stamped at or before it, if it
    is at most ``max_age_s`` older (else the first after, as for "after").

    "at" is for slow telemetry (a weather station publishing once a minute): "after" would
    hold the header until the station's next sample, or past the deadline (a partial header)."""

    topic: str
    field: str
    event: str = "START_INTEGRATION"
    comment: str = ""
    when: str = "after"
    max_age_s: float = 300.0


def _default_keywords() -> dict[str, KeywordSpec]:
    k = KeywordSpec
    return {
        "RA": k("mount.pointing", "ra", comment="Telescope RA at start (deg, ICRS)"),
        "DEC": k("mount.pointing", "dec", comment="Telescope Dec at start (deg, ICRS)"),
        "ROTPA": k("mount.pointing", "rotpa", comment="Rotator position angle (deg)"),
        "ELSTART": k("mount.pointing", "alt", comment="Telescope altitude at start (deg)"),
        "AZSTART": k("mount.pointing", "az", comment="Telescope azimuth at start (deg)"),
        "FILTER": k("camera.filter", "name", comment="Filter in the beam"),
        "DOMEAZ": k("dome.status", "azimuth", comment="Dome azimuth (deg)"),
        "SHUTTER": k("dome.status", "shutter", comment="Dome shutter state"),
        "CCDTEMP": k("camera.temperatures", "ccd", comment="CCD temperature (degC)"),
        "CRYOTEMP": k("camera.temperatures", "cryostat", comment="Cryostat temperature (degC)"),
        # A weather station publishes every few seconds to minutes: its value at the end of readout.
        "AIRTEMP": k("site.weather", "temperature", event="END_READOUT", when="at",
                     comment="Outside air temperature (degC)"),
        "HUMIDITY": k("site.weather", "humidity", event="END_READOUT", when="at", comment="Relative humidity (%)"),
        "PRESSURE": k("site.weather", "pressure", event="END_READOUT", when="at", comment="Barometric pressure (hPa)"),
    }


@dataclass(frozen=True)
class HeaderServiceConfig:
    #: An image's header is written at the latest this long after its exposure ends
    #: (start + exposure time + margin), with whatever telemetry arrived; then flagged partial.
    timeout_margin_s: float = 30.0
    telescope: str = "FITSFLOW"
    #: Telemetry samples remembered per topic (the window in which a late event still finds its sample).
    history_per_topic: int = 64
    keywords: dict[str, KeywordSpec] = field(default_factory=_default_keywords)

    def validate(self, check) -> None:  # type: ignore[no-untyped-def]
        check.positive("header_service.timeout_margin_s", self.timeout_margin_s)
        check.positive("header_service.history_per_topic", self.history_per_topic)
        for name, spec in self.keywords.items():
            where = f"header_service.keywords.{name}"
            if not (1 <= len(name) <= 8 and all(c.isupper() or c.isdigit() or c in "-_" for c in name)):
                check.fail(where, "a FITS keyword has 1-8 characters: A-Z, 0-9, '-' or '_'")
            if spec.event not in EVENTS:
                check.fail(f"{where}.event", f"{spec.event!r} is not one of {', '.join(EVENTS)}")
            if spec.when not in WHEN:
                check.fail(f"{where}.when", f"{spec.when!r} is not one of {', '.join(WHEN)}")
            check.positive(f"{where}.max_age_s", spec.max_age_s)
            if len(spec.comment) > 47:
                check.fail(f"{where}.comment", "too long for a FITS card (47 characters at most)")
            try:
                check_name(spec.topic.replace(".", "_"), "topic")
            except Exception:  # noqa: BLE001
                check.fail(f"{where}.topic", f"{spec.topic!r} is not a topic name")
