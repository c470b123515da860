"""Fixtures for the real-sshd tier (placeholder until the lab lands)."""
