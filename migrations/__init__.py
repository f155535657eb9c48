"""migrations: see architecture.md."""
