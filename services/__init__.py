"""services: the CLI, run wiring, controller, dispatchers, workers and API (docs/architecture.md, "Components")."""
