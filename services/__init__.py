"""services: CLI, run wiring, controller, dispatchers, workers, API (docs/architecture.md)."""
