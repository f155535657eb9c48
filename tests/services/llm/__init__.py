"""Tests of the LLM adapter (services/llm/), against the scripted endpoint (tests/llm_server.py)."""
