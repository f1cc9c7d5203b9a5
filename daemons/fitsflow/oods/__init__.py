"""OODS ingest: staged files → the Observatory Operations Data Service repository and registry,
with cache expiry."""
