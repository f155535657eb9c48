"""Tests of the OS sandbox around candidates and tasks (evaluator_worker/sandbox)."""
