"""Tests of the dispatchers (services/dispatch/)."""
