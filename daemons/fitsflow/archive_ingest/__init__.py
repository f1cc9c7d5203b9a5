"""Archive (Data Backbone) ingest: staged files → the long-term archive layout and registry.
Nothing is ever deleted from the archive by fitsflow."""
