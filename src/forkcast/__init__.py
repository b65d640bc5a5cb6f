"""Forkcast: a governed machine-learning lifecycle."""
