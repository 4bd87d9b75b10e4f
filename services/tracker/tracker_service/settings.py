"""Tracker settings: ``TRACKER_*`` environment variables (see ``sagakit.TrackerSettings``)."""

from __future__ import annotations

from sagakit import TrackerSettings

__all__ = ["TrackerSettings"]
