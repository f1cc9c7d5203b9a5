"""The header service: camera events + telemetry → one header object per image.

config (keyword map) → builder (pure: what each keyword's value is) → store (per-image state
on disk, so a restart resumes) → daemon (subscriptions, deadlines, HEADER_READY)."""
