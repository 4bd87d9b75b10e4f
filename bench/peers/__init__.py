"""The order saga written for other durable-execution systems, for ``saga_bench.py --peers``.

The same four steps as the reference system (reserve stock, charge payment, ship, confirm),
each a durable write to a table of its own; a business failure at a step compensates the
steps before it in reverse order, each compensation a durable write too. ``_saga`` holds
what every peer shares (orders, rules, tables, the row check), ``dbos_saga`` and
``temporal_saga`` the peers themselves, ``_systems`` how the benchmark runs them.
"""
