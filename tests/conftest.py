"""Shared fixtures. Fixture modules are split by owner so parallel work does not collide."""

pytest_plugins = ["tests.fixtures_core", "tests.fixtures_model", "tests.fixtures_access", "tests.fixtures_safety"]
