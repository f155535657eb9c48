"""services: see architecture.md."""
