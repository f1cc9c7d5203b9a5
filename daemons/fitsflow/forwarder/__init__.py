"""The forwarder: joins a readout and its header into one FITS file per sensor.

config → fitswriter (astropy; atomic, checksummed) → assignments (state on disk) → daemon
(FORWARD_IMAGE, the join of READOUT_COMPLETE and HEADER_READY, heartbeats, FILE_DELIVERED)."""
