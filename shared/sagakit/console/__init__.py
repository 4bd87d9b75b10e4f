"""The operations console: the tracker's sagas and the dead letters in a browser."""

from sagakit.console._app import ConsoleSettings, console_app
from sagakit.console._graph import flow_svg
from sagakit.console._queries import SagaFilter, SagaPage, saga_page
from sagakit.console._server import ConsoleServer

__all__ = [
    "ConsoleServer",
    "ConsoleSettings",
    "SagaFilter",
    "SagaPage",
    "console_app",
    "flow_svg",
    "saga_page",
]
