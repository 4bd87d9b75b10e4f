"""Every committed AsyncAPI document is valid for the official AsyncAPI parser.

``@asyncapi/parser`` (what ``asyncapi validate`` runs: the spec's and the bindings' JSON
schemas, references, then its ruleset) at the version pinned in
tools/asyncapi-validate/package-lock.json, on the machine's Node.js. ``.ci/run`` installs
it; this test installs it too when it is missing. Without Node.js and npm the test skips,
saying so, except in CI, where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
VALIDATOR = ROOT / "tools" / "asyncapi-validate"
DOCUMENTS = sorted((ROOT / "contracts" / "asyncapi").glob("*.json"))

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def node() -> str:
    tools = {name: shutil.which(name) for name in ("node", "npm")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        reason = (
            f"{' and '.join(missing)} not found: the AsyncAPI documents are validated with "
            "the official parser on Node.js (tools/asyncapi-validate)"
        )
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run this check")
        pytest.skip(reason)
    installed = subprocess.run(
        ["bash", str(VALIDATOR / "install.sh")],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr or installed.stdout
    path = tools["node"]
    assert path is not None
    return path


def _validate(node: str, *paths: Path) -> tuple[int, list[dict[str, Any]]]:
    run = subprocess.run(
        [node, str(VALIDATOR / "validate.mjs"), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=VALIDATOR,
    )
    assert run.returncode in {0, 1}, run.stderr
    return run.returncode, [json.loads(line) for line in run.stdout.splitlines()]


def _errors(report: dict[str, Any]) -> list[str]:
    return [
        f"{d['severity']} {d['code']} at {d['path']}: {d['message']}"
        for d in report["diagnostics"]
        if d["severity"] in {"error", "warning"}
    ]


def test_there_is_a_document_per_service() -> None:
    assert [p.stem for p in DOCUMENTS] == [
        "inventory",
        "notification",
        "payment",
        "shipping",
        "tracker",
    ]


def test_every_committed_document_is_valid_for_the_official_parser(node: str) -> None:
    code, reports = _validate(node, *DOCUMENTS)

    assert [r["file"] for r in reports] == [str(p) for p in DOCUMENTS]
    for report in reports:
        assert report["valid"], f"{report['file']}: {_errors(report)}"
        assert _errors(report) == []
        assert report["asyncapi"] == "3.0.0"
        assert report["operations"] > 0
        assert report["messages"] > 0
    assert code == 0


def test_the_parser_rejects_a_document_that_breaks_the_amqp_bindings(
    node: str, tmp_path: Path
) -> None:
    document = json.loads((ROOT / "contracts" / "asyncapi" / "payment.json").read_text())
    parked = document["operations"]["payment.dlq"]["bindings"]["amqp"]
    parked["deliveryMode"] = 3  # neither transient (1) nor persistent (2)
    broken = tmp_path / "payment.json"
    broken.write_text(json.dumps(document))

    code, [report] = _validate(node, broken)

    assert code == 1
    assert not report["valid"]
    assert any("deliveryMode" in error for error in _errors(report)), report
