"""How every benchmark ends: a two-column table on the console and the raw figures as JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def publish(title: str, rows: Sequence[Sequence[str]], results: dict[str, Any], out: Path,
            header: Sequence[str] = ("measure", "value")) -> None:
    """Print ``rows`` under ``header`` (the first column left, the others right) and write ``results``."""
    table = Table(title=title)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=160).print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")
