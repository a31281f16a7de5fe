"""Evaluation metrics for generated dubbing audio."""
