"""Transport tests: the conformance suite every transport passes, wire bytes, and per-transport specifics."""
