"""Tests of the evaluator (evaluator_worker/): gate, protocol, timing, comparison, corpus."""
