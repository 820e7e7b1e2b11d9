"""Skipper's modules. Each imports only `skipper.core`, never another module."""
