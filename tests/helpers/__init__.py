"""What the tests share: constants and helpers that several test modules use (so test modules
never import one another; tests/unit/test_layering.py checks it)."""
