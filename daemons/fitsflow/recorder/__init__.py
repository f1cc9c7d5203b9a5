"""fitsflow-recorder: persists every fitsflow message, follows each image's life cycle and
each daemon's state, and serves the read-only status page."""
