"""Tests of the service (services/), one folder per room."""
