"""Code shared by every fitsflow daemon: errors, configuration, messages, the bus, the
on-disk layout and hand-off primitives, and the daemon runtime.

Daemons import from here and never from each other.
"""
