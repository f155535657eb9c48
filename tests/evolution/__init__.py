"""Tests of the search core (evolution/): descriptors, emitters, grid, the loop."""
