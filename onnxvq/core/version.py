"""The package version (read by the sidecar; kept in the core so every stage may import it)."""

__version__ = "0.1.0"
