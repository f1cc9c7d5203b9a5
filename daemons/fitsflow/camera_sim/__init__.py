"""A camera simulator: SPEAD streams of seeded pixels, camera events and telemetry on the bus,
and a store of recent images that can be re-sent — for tests, benchmarks and the demo."""
