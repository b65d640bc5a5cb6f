"""Monitoring: drift reports, replayed traffic, endpoint probes and alerts."""
