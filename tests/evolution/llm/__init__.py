"""Tests of the LLM core (evolution/llm/): edits, prompts, the bandit, prompt strategies."""
