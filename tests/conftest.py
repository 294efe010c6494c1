"""pytest configuration.  Shared helpers live in :mod:`tests.tiny` (import them from there)."""
