"""Tests of the archive database (archive/): store, leases, migrations."""
