"""Fixtures for the core: settings and a database in a temporary directory."""
