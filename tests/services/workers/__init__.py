"""Tests of the workers (services/workers/): Celery fleet, heartbeats, remote workers."""
