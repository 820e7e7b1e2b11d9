"""The shared kernel: messages, bus interface, settings, persistence and HTTP plumbing.

Modules import only from here, never from each other.
"""
