"""Shared pytest fixtures for tests/ and e2e/: the real local control plane, namespaces, operators."""

pytest_plugins = ["tests.fixtures"]
