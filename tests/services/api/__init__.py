"""Tests of the REST API (services/api/): routes, auth, fuzzing, metrics."""
