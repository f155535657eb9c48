"""Tests of the embedded Redis (services/broker/)."""
