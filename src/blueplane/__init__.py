"""Blueplane Monitor: local telemetry for AI-assisted coding in Cursor."""

__version__ = "0.1.0"
