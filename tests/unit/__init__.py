"""Unit tests: core pieces, settings, contracts, persistence, deployment files (parsed, not run)."""
