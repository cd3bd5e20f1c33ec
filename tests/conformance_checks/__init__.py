"""Per-family conformance checks used by tests/test_conformance.py."""
