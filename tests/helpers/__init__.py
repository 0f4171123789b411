"""Helpers shared by the integration tests (so test modules never import one another)."""
