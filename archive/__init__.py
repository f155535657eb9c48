"""archive: see architecture.md."""
