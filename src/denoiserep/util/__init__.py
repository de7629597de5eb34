"""Helpers below the method: configuration values, weights files, one-line errors."""
