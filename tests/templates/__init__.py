"""Tests of the template library (evolution/templates/), one module per family."""
