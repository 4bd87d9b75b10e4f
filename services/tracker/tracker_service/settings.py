"""Tracker settings: ``TRACKER_*`` environment variables (see ``sagakit.TrackerSettings``)."""

from __future__ import annotations

from sagakit.tracker import TrackerSettings

__all__ = ["TrackerSettings"]
