"""Tests of the Docker files and compose deployment."""
