"""The fault tier: the fault matrix (issue #12) and the private infrastructure it stands on.

The matrix reuses the chaos run's ledger, audit, hostile messages and store faults, which
live in bench/ as top-level modules: bench goes on ``sys.path`` for this tier.
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
