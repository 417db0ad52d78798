"""Synthetic data with known factors of variation, for checking that found directions are real."""
