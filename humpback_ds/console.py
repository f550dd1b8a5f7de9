"""Progress bars with counts and rates, and end-of-stage summary tables (rank 0 only)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from humpback_ds import dist

console = Console(stderr=True)


class RateColumn(TextColumn):
    """Items per second, with the unit of the bar (docs/s, MB/s, tok/s)."""

    def __init__(self, unit: str = "it"):
        super().__init__("")
        self.unit = unit

    def render(self, task: Any) -> Any:
        speed = task.finished_speed or task.speed
        from rich.text import Text

        return Text(f"{speed:,.1f} {self.unit}/s" if speed else f"- {self.unit}/s", style="cyan")


def progress(unit: str = "it", *, extra: Sequence[Any] = ()) -> Progress:
    """A rich progress bar: description, bar, done/total, %, rate, elapsed, remaining."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(unit),
        *extra,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not dist.is_main(),
        transient=False,
    )


def summary_table(
    title: str, rows: Iterable[tuple[Any, ...]], columns: Sequence[str] = ("", "value")
) -> Table:
    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(
            *(
                f"{v:,}"
                if isinstance(v, int) and not isinstance(v, bool)
                else f"{v:,.3f}"
                if isinstance(v, float)
                else str(v)
                for v in row
            )
        )
    return table


def show(table: Table) -> None:
    if dist.is_main():
        console.print(table)
