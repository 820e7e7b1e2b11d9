"""Skipper: a small ML workflow engine that trains, registers and serves Keras models."""

__version__ = "0.1.0"
