"""evolution: see architecture.md."""
