"""fitsflow — camera pixels to archived, ingested FITS files, without losing any."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"',
    (HERE / "daemons" / "fitsflow" / "__init__.py").read_text(),
    re.M,
).group(1)

setup(
    name="fitsflow",
    version=VERSION,
    description="Observatory data backbone: SPEAD pixels to archived and ingested FITS files",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.11",
    package_dir={"": "daemons"},
    packages=find_packages("daemons"),
    package_data={"fitsflow.testing": ["activemq.xml"], "fitsflow.recorder": ["static/*"]},
    install_requires=[
        # stomp.py: the STOMP client (only fitsflow.core.bus.stomp_transport imports it)
        "stomp.py>=8.1",
        # systemd-python (python3-systemd on EL and Debian): sd_notify (READY=1, STATUS=,
        # WATCHDOG=1) and the journal's native protocol, memfd for large records included
        "systemd-python>=234",
        # SQLAlchemy: registries and bookkeeping; SQLite by default, PostgreSQL supported
        "SQLAlchemy>=2.0",
        # alembic: schema migrations of the site database, run by the daemons at start-up
        "alembic>=1.7",
        # spead2: the SPEAD receiver (and the simulator's sender): C++ speed from Python
        "spead2>=4.3",
        # msgspec: every message body decoded and checked against its typed schema in one pass
        "msgspec>=0.18",
        # numpy: pixel arrays, zero-copy from spead2 heaps to files
        "numpy>=1.24",
        # prometheus_client: per-stream receive counters for scraping
        "prometheus_client>=0.17",
        # inotify_simple: the OODS and archive ingest watch their staging trees
        "inotify_simple>=1.3",
        # astropy: FITS writing with CHECKSUM/DATASUM, times (MJD) and angles for headers
        "astropy>=5.3",
        # isal: ISA-L's CRC-32, ~10x zlib's: the receiver checksums every stripe it stores
        "isal>=1.5",
    ],
    extras_require={
        # a site database on PostgreSQL (site.database_url = "postgresql+psycopg://...")
        "postgresql": ["psycopg[binary]>=3.1"],
        # registration of archived files in a Rucio data lake ([rucio] enabled = true)
        "rucio": ["rucio-clients>=38"],
        "test": [
            "pytest>=7",
            "pytest-timeout>=2",
            # the suite runs in a random order (seed printed) so that an order dependence shows
            "pytest-randomly>=3.15",
            # property-based fuzzing of message decoding
            "hypothesis>=6",
            # man pages from the argparse parsers (rpm/build-manpages; python3-argparse-manpage on EL)
            "argparse-manpage>=4",
            # PostgreSQL driver: the registry is tested against a real PostgreSQL too
            "psycopg[binary]>=3.1",
            # a real SMTP server for the panic mailer's tests
            "aiosmtpd>=1.4",
            # the archive's Rucio registration is tested against a real Rucio server
            "rucio-clients>=38",
        ],
    },
    entry_points={
        "console_scripts": [
            "fitsflow = fitsflow.cli:main",
            "fitsflow-wrap = fitsflow.wrap:main",
            "fitsflow-panic-mailer = fitsflow.panic_mailer.__main__:main",
            "fitsflow-recorder = fitsflow.recorder.__main__:main",
            "fitsflow-receiver = fitsflow.receiver.__main__:main",
            "fitsflow-camera-sim = fitsflow.camera_sim.__main__:main",
            "fitsflow-demo = fitsflow.testing.demo:main",
            "fitsflow-header-service = fitsflow.header_service.__main__:main",
            "fitsflow-forwarder = fitsflow.forwarder.__main__:main",
            "fitsflow-archive-controller = fitsflow.archive_controller.__main__:main",
            "fitsflow-oods = fitsflow.oods.__main__:main",
            "fitsflow-archive-ingest = fitsflow.archive_ingest.__main__:main",
        ],
        "fitsflow.config_sections": [
            "receiver = fitsflow.receiver.config:ReceiverConfig",
            "header_service = fitsflow.header_service.config:HeaderServiceConfig",
            "forwarder = fitsflow.forwarder.config:ForwarderConfig",
            "archive_controller = fitsflow.archive_controller.config:ArchiveControllerConfig",
            "oods = fitsflow.oods.config:OodsConfig",
            "archive_ingest = fitsflow.archive_ingest.config:ArchiveIngestConfig",
            "panic_mailer = fitsflow.panic_mailer.config:PanicMailerConfig",
            "recorder = fitsflow.recorder.config:RecorderConfig",
            "rucio = fitsflow.archive_ingest.rucio_config:RucioConfig",
        ],
    },
)
