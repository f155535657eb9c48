"""evolution: the search core (docs/architecture.md, "Search core")."""
