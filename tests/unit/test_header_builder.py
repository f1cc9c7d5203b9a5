"""The header service's pure logic: exact cards from events and telemetry samples."""

from __future__ import annotations

import datetime as dt

from fitsflow.header_service.builder import ImageRecord, Sample, add_sample, build_header, sample_keywords
from fitsflow.header_service.config import HeaderServiceConfig, KeywordSpec

CFG = HeaderServiceConfig(telescope="TESTSCOPE", keywords={
    "RA": KeywordSpec("mount.pointing", "ra", comment="RA"),
    "DEC": KeywordSpec("mount.pointing", "dec", comment="Dec"),
    "ELSTART": KeywordSpec("mount.pointing", "alt", comment="Alt"),
    "FILTER": KeywordSpec("camera.filter", "name", comment="Filter"),
    "AIRTEMP": KeywordSpec("site.weather", "temperature", event="END_READOUT", comment="Air"),
})
NOW = dt.datetime(2026, 11, 21, 4, 0, 0, tzinfo=dt.timezone.utc)


def record() -> ImageRecord:
    return ImageRecord(image="TESTCAM_O_20261120_000007", group="G1", snap=1, exptime=15.0,
                       events={"START_INTEGRATION": "2026-11-21T03:00:00.000000Z",
                               "END_READOUT": "2026-11-21T03:00:17.000000Z"})


def history() -> dict[str, list[Sample]]:
    return {
        "mount.pointing": [Sample("2026-11-21T02:59:59Z", {"ra": 1.0, "dec": 2.0, "alt": 10.0}),  # before: ignored
                           Sample("2026-11-21T03:00:00.5Z", {"ra": 150.0, "dec": -30.0, "alt": 60.0}),
                           Sample("2026-11-21T03:00:05Z", {"ra": 151.0, "dec": -31.0, "alt": 61.0})],
        "camera.filter": [Sample("2026-11-21T03:00:01Z", {"name": "r"})],
        "site.weather": [Sample("2026-11-21T03:00:02Z", {"temperature": 9.0}),  # before END_READOUT
                         Sample("2026-11-21T03:00:18Z", {"temperature": 8.5})],
    }


def test_exact_cards() -> None:
    rec = record()
    assert sample_keywords(rec, CFG, history())
    header = build_header(rec, CFG, "TESTCAM", NOW)
    cards = {k: v for k, v, _ in header.cards}
    assert header.partial is False and header.missing_keywords == []
    assert cards["DATE-OBS"] == "2026-11-21T03:00:00.000"
    assert cards["DATE-END"] == "2026-11-21T03:00:15.000"
    assert cards["DATE-RDO"] == "2026-11-21T03:00:17.000"
    mjd_day = (dt.date(2026, 11, 21) - dt.date(1858, 11, 17)).days  # MJD 0 = 1858-11-17
    assert cards["MJD-OBS"] == mjd_day + 0.125  # 03:00 UTC = 0.125 d
    assert cards["EXPTIME"] == 15.0 and cards["SNAP"] == 1 and cards["GROUPID"] == "G1"
    assert cards["IMGNAME"] == cards["OBSID"] == "TESTCAM_O_20261120_000007"
    assert (cards["RA"], cards["DEC"], cards["ELSTART"]) == (150.0, -30.0, 60.0)  # first sample after start
    assert cards["RASTR"] == "10:00:00.00" and cards["DECSTR"] == "-30:00:00.0"
    assert cards["RADESYS"] == "ICRS" and "EQUINOX" not in cards  # ICRS has no equinox (FITS 4.0 8.1)
    assert cards["FILTER"] == "r"
    assert cards["AIRTEMP"] == 8.5  # sampled after END_READOUT, as configured
    assert cards["AIRMASS"] == 1.1547  # sec(30 deg)
    assert cards["HDRPART"] is False and "HDRMISS" not in cards
    assert cards["TELESCOP"] == "TESTSCOPE" and cards["INSTRUME"] == "TESTCAM"


def test_missing_telemetry_makes_a_partial_header() -> None:
    rec = record()
    h = history()
    del h["camera.filter"]
    h["site.weather"] = h["site.weather"][:1]  # nothing after END_READOUT
    sample_keywords(rec, CFG, h)
    header = build_header(rec, CFG, "TESTCAM", NOW)
    cards = {k: v for k, v, _ in header.cards}
    assert header.partial is True and header.missing_keywords == ["AIRTEMP", "FILTER"]
    assert cards["FILTER"] is None and cards["HDRPART"] is True and cards["HDRMISS"] == "AIRTEMP,FILTER"


def test_keywords_wait_for_their_event() -> None:
    rec = record()
    del rec.events["END_READOUT"]
    sample_keywords(rec, CFG, history())
    assert "AIRTEMP" not in rec.sampled and rec.sampled["FILTER"] == "r"


def test_late_samples_are_ordered_by_time_and_the_oldest_dropped() -> None:
    samples: list[Sample] = []
    for ts, ra in [("2026-11-21T03:00:05Z", 151.0), ("2026-11-21T02:59:59+00:00", 1.0),
                   ("2026-11-21T03:00:00.5Z", 150.0), ("2026-11-21T03:00:09Z", 152.0)]:
        add_sample(samples, Sample(ts, {"ra": ra}), keep=3)
    assert [s.values["ra"] for s in samples] == [150.0, 151.0, 152.0]
    rec = record()
    sample_keywords(rec, CFG, {"mount.pointing": samples})
    assert rec.sampled["RA"] == 150.0  # the first at or after START_INTEGRATION, though it came late


def test_a_sample_without_the_field_is_skipped() -> None:
    rec = record()
    sample_keywords(rec, CFG, {"mount.pointing": [Sample("2026-11-21T03:00:01Z", {"az": 3.0}),
                                                  Sample("2026-11-21T03:00:02Z", {"ra": 7.0})]})
    assert rec.sampled["RA"] == 7.0 and "ELSTART" not in rec.sampled


AT = HeaderServiceConfig(keywords={
    "AIRTEMP": KeywordSpec("site.weather", "temperature", event="END_READOUT", when="at", max_age_s=60.0),
    "HUMIDITY": KeywordSpec("site.weather", "humidity", event="END_READOUT", when="at", max_age_s=60.0),
})


def test_at_takes_the_sample_in_force_at_the_event() -> None:
    """``when = "at"``: the latest sample stamped at or before the event, without waiting for
    one after it; an older sample for a field the latest lacks; one after the event is not
    taken while an earlier one is in force, and arriving later it changes nothing."""
    rec = record()  # END_READOUT at 03:00:17
    weather = [Sample("2026-11-21T03:00:02Z", {"temperature": 9.0, "humidity": 30.0}),
               Sample("2026-11-21T03:00:12Z", {"temperature": 9.2})]
    assert sample_keywords(rec, AT, {"site.weather": list(weather)})
    assert rec.sampled == {"AIRTEMP": 9.2, "HUMIDITY": 30.0}
    assert not sample_keywords(rec, AT, {"site.weather": weather + [Sample("2026-11-21T03:00:18Z",
                                                                           {"temperature": 8.0, "humidity": 1.0})]})
    assert rec.sampled == {"AIRTEMP": 9.2, "HUMIDITY": 30.0}


def test_at_waits_for_the_next_sample_when_the_last_is_too_old() -> None:
    """A sample older than ``max_age_s`` at the event is not in force: the keyword takes the
    first sample after the event, as ``when = "after"`` does; without one it is missing."""
    rec = record()
    stale = [Sample("2026-11-21T02:58:00Z", {"temperature": 5.0, "humidity": 50.0})]  # 137 s before END_READOUT
    assert not sample_keywords(rec, AT, {"site.weather": list(stale)})
    assert rec.sampled == {}
    assert sample_keywords(rec, AT, {"site.weather": stale + [Sample("2026-11-21T03:00:30Z",
                                                                     {"temperature": 6.0, "humidity": 40.0})]})
    assert rec.sampled == {"AIRTEMP": 6.0, "HUMIDITY": 40.0}


def test_at_waits_for_its_event() -> None:
    rec = record()
    del rec.events["END_READOUT"]
    assert not sample_keywords(rec, AT, {"site.weather": [Sample("2026-11-21T03:00:02Z", {"temperature": 9.0})]})
    assert rec.sampled == {}
