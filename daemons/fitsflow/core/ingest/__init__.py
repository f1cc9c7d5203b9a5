"""The ingest engine shared by the OODS and archive ingest daemons: finding staged files
(inotify + messages + scans), verifying them, placing them, recording them in a registry."""
