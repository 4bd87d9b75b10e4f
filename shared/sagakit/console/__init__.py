"""The operations console: the tracker's sagas and the dead letters in a browser."""

from sagakit.console._app import ConsoleSettings, console_app

__all__ = ["ConsoleSettings", "console_app"]
