"""fitsflow: an observatory data backbone.

Camera pixels arrive as SPEAD streams, are joined with their metadata into FITS files,
handed off by hard links to the OODS and the archive, ingested and announced. Each step is
a separate daemon; they share :mod:`fitsflow.core` and talk through an ActiveMQ broker.
"""

__version__ = "0.1.0"


def panic(message: str, *, config: str | None = None) -> str:
    """Raise a panic: the on-call shifter is e-mailed. See :mod:`fitsflow.core.panic`.

    Imported lazily so that ``import fitsflow`` stays light."""
    from fitsflow.core.panic import panic as _panic

    return _panic(message, config=config)
