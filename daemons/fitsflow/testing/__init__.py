"""Helpers for testing fitsflow and systems built on it: a private ActiveMQ broker, a
poll-until-deadline helper and configuration builders. ``fitsflow.testing.pytest_plugin``
turns them into pytest fixtures."""
