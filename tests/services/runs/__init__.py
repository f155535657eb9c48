"""Tests of run wiring and the controller (services/runs/)."""
