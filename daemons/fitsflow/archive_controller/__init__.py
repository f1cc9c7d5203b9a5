"""The archive controller: assigns sensors to forwarders, watches their heartbeats, and hands
finished files to the OODS and the archive by hard links, exactly once.

config → book (its database: assignments and hand-offs) → handoff (the steps) → daemon."""
