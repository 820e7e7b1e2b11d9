"""Module tests: each module (and the api app) in-process over the memory bus, against real services."""
