"""sagakit reaches into no private attribute of SQLAlchemy, aiosqlite or asyncpg.

The store once replayed statements through SQLAlchemy's compiler internals
(``positiontup``, ``escaped_bind_names``, ``post_compile_params``, the adapter's
``_handle_exception``) and imitated aiosqlite's private attributes (``_connection``, ``_tx``):
an upgrade of either could have run statements outside the transaction without a test
noticing. This greps ``shared/`` for them. (``self._x`` is an object's own attribute, allowed.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
FORBIDDEN = {
    # SQLAlchemy's compiler and execution internals
    "positiontup": r"\bpositiontup\b",
    "escaped_bind_names": r"\bescaped_bind_names\b",
    "post_compile_params": r"\bpost_compile_params\b",
    "literal_execute_params": r"\bliteral_execute_params\b",
    "insert_prefetch": r"\binsert_prefetch\b",
    "update_prefetch": r"\bupdate_prefetch\b",
    "effective_returning": r"\beffective_returning\b",
    "_returning": r"\._returning\b",
    "_handle_exception": r"\b_handle_exception\b",
    # the DB-API connection under SQLAlchemy's (a transaction SQLAlchemy thinks it owns)
    "get_raw_connection": r"\bget_raw_connection\b",
    "driver_connection": r"\bdriver_connection\b",
    # aiosqlite's and asyncpg's private attributes, reached or imitated
    "._connection": r"(?<!self)\._connection\b|def _connection\(self\)",
    "._conn": r"(?<!self)\._conn\b",
    "._tx": r"\._tx\b",
    "._protocol": r"\._protocol\b",
    "._top_xact": r"\._top_xact\b",
}


def _lines() -> list[tuple[str, int, str]]:
    return [
        (str(path.relative_to(SHARED)), number, line)
        for path in sorted(SHARED.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
    ]


def test_there_are_sources_to_search() -> None:
    assert len({path for path, _, _ in _lines()}) > 20


@pytest.mark.parametrize("name", sorted(FORBIDDEN))
def test_no_private_attribute_of_the_database_libraries_is_used(name: str) -> None:
    pattern = re.compile(FORBIDDEN[name])
    found = [
        f"{path}:{number}: {line.strip()}"
        for path, number, line in _lines()
        if pattern.search(line)
    ]
    assert found == [], f"{name} is used in shared/:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("positiontup", "names = tuple(compiled.positiontup)"),
        ("escaped_bind_names", "        or compiled.escaped_bind_names"),
        ("post_compile_params", "        or compiled.post_compile_params"),
        ("_handle_exception", 'translate = getattr(self._adapter, "_handle_exception", None)'),
        ("._connection", "    def _connection(self) -> sqlite3.Connection | None:"),
        ("._connection", "        if adapted._connection is None:"),
        ("._tx", "        self._tx = _RunNow()"),
        ("driver_connection", "                    raw.driver_connection,"),
    ],
)
def test_the_patterns_catch_what_the_old_store_did(name: str, line: str) -> None:
    assert re.search(FORBIDDEN[name], line)


def test_an_objects_own_attribute_is_not_caught() -> None:
    assert not re.search(FORBIDDEN["._connection"], "        self._connection = None")
