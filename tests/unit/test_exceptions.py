"""One exception tree: every exception sagakit defines is a SagaError, in one module, drawn in
its docstring."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import sagakit
from sagakit import SagaError, _exceptions

# The runtime's control flow, which never leaves it, and the AMQP client's own error type.
_INTERNAL = {
    "sagakit.runtime._breaker.Outage",
    "sagakit.runtime._dispatcher.RetryableError",
    "sagakit.runtime._events.EventTooLarge",
    "sagakit.broker._failover.ConnectionRenewed",
}


def _sagakit_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for module_info in pkgutil.walk_packages(sagakit.__path__, prefix="sagakit."):
        module = importlib.import_module(module_info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__.startswith("sagakit."):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return found


def test_every_sagakit_exception_is_a_saga_error_defined_in_the_exception_module() -> None:
    found = _sagakit_exceptions()

    outside = sorted(
        name for name in found if name not in _INTERNAL and not name.startswith("sagakit._exc")
    )
    assert outside == [], "define these in sagakit._exceptions"
    not_saga_errors = sorted(
        name
        for name, cls in found.items()
        if name not in _INTERNAL and not issubclass(cls, SagaError)
    )
    assert not_saga_errors == []
    assert set(_INTERNAL) <= set(found), "an internal exception moved: update this test"


def test_the_docstring_draws_every_exception_of_the_tree() -> None:
    doc = _exceptions.__doc__ or ""
    tree = doc.split("The tree:", 1)[1].split("\n\n", 2)[1]
    drawn = [line.strip().split()[1] for line in tree.splitlines()]
    defined = [
        name
        for name, value in vars(_exceptions).items()
        if inspect.isclass(value) and issubclass(value, SagaError)
    ]
    assert sorted(drawn) == sorted(defined)
    # Each is drawn under its parent: indented one level deeper than the class it extends.
    depth = {line.strip().split()[1]: len(line) - len(line.lstrip()) for line in tree.splitlines()}
    for name in defined:
        parent = getattr(_exceptions, name).__mro__[1]
        if parent is not Exception:
            assert depth[name] == depth[parent.__name__] + 2, name


def test_a_watch_timeout_is_still_a_timeout_error() -> None:
    from sagakit.client import WatchTimeout

    assert issubclass(WatchTimeout, TimeoutError)
    assert issubclass(WatchTimeout, SagaError)
