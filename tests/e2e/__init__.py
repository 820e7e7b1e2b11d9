"""End to end: the whole engine in one process or as real role processes, the CLI and client, the package."""
