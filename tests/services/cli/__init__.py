"""Tests of the kernelmap command (services/cli/)."""
