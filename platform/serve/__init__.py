"""Serving: the trained dubber behind Ray Serve."""
