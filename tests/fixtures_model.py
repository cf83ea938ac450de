"""Fixtures that build the tiny local model (owned by the local-backend work)."""
