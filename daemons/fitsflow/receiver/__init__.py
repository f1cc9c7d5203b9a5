"""The receiver daemon: SPEAD streams → raw buffer store → READOUT_COMPLETE, with every lost
packet counted. Reads top-down: config → stream (UDP/SPEAD decoding) → assembler (images and
sensors on disk) → metrics (loss accounting) → daemon (wiring and event handlers)."""
