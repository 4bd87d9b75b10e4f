"""The README's event-flow diagram is what ``saga graph`` draws from the spec."""

from __future__ import annotations

from pathlib import Path

from order_contracts import ORDER_SAGA
from sagakit.cli import app
from sagakit.cli._graph import README_END, README_START, render_mermaid, with_graph
from typer.testing import CliRunner

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_diagram_is_the_generated_one() -> None:
    readme = README.read_text(encoding="utf-8")
    assert readme.count(README_START) == 1
    assert readme.count(README_END) == 1

    assert with_graph(readme, ORDER_SAGA) == readme, (
        "README.md's diagram is out of date: run `uv run saga graph --readme README.md`"
    )


def test_saga_graph_prints_the_diagram_the_readme_shows() -> None:
    result = CliRunner().invoke(app, ["graph", "--spec", "order_contracts:ORDER_SAGA"])

    assert result.exit_code == 0, result.output
    assert result.output == render_mermaid(ORDER_SAGA)
    assert f"```mermaid\n{result.output}```" in README.read_text(encoding="utf-8")


def test_the_diagram_draws_every_path() -> None:
    diagram = render_mermaid(ORDER_SAGA)

    # Forward, each step's failure, each undo and the end of the backward path, once each.
    for step in ORDER_SAGA.steps:
        assert diagram.count(f'"{step.participant}: {step.name}"') == 1
        assert diagram.count(f'"{step.participant}: {step.name} fails"') == 1
        if step.has_compensation:
            undo = f'"{step.participant}: undo {step.name}"'
            assert diagram.count(undo) == len(step.compensate_on)
    assert diagram.count("ends the saga") == 2  # after its own failure, after its release
    assert "order_cancelled --> notification__send_cancellation_notice" in diagram


def test_a_readme_without_the_markers_gets_a_section(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# my flow\n\nSome text.\n", encoding="utf-8")

    result = CliRunner().invoke(
        app, ["graph", "--spec", "order_contracts:ORDER_SAGA", "--readme", str(readme)]
    )

    assert result.exit_code == 0, result.output
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# my flow\n\nSome text.\n\n## The event flow\n\n<!-- saga graph -->")
    assert with_graph(text, ORDER_SAGA) == text
