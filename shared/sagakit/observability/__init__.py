"""Logs, traces, metrics and health endpoints of a service."""
