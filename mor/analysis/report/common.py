"""What every report shares: stated targets (`Check`) and numbers written so words cannot contradict them."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Check:
    """One stated target and whether the measured value meets it (`holds` is computed by the caller
    from the same numbers `measured` states)."""

    claim: str
    holds: bool
    measured: str

    def line(self) -> str:
        return f"- {'✅' if self.holds else '❌'} {self.claim}: **{'holds' if self.holds else 'does NOT hold'}** ({self.measured})."


def checks_heading(checks: list[Check]) -> str:
    """"## Targets: k of n hold", counted from the checks themselves."""
    return f"## Targets: {sum(c.holds for c in checks)} of {len(checks)} hold"


def num(value, digits: int = 4, none: str = "n/a") -> str:
    """`value` with `digits` decimals; `none` for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return none
    return f"{value:.{digits}f}"


def dash(value, digits: int = 2) -> str:
    """A table cell: `num`, with an en dash for a missing value."""
    return num(value, digits, none="–")


def shown(value: float, threshold: float, digits: int = 2, below: bool = False) -> str:
    """`value` with at least `digits` decimals and as many more as it takes for the written number
    to sit on the same side of `threshold` as the value itself (so 1.2996 against a 1.3 target is
    written 1.2996, never 1.30). below=False compares value >= threshold, below=True value < threshold."""
    def side(x: float) -> bool:
        return x < threshold if below else x >= threshold

    for d in range(digits, 9):
        text = f"{value:.{d}f}"
        if side(float(text)) == side(value):
            return text
    return repr(value)


def relative(ratio: float) -> str:
    """A ratio of speeds in words that follow its direction: '24% faster', '18% slower', 'as fast'."""
    change = ratio - 1
    if round(100 * change) == 0:
        return "as fast" if change == 0 else f"{100 * abs(change):.1f}% {'faster' if change > 0 else 'slower'}"
    return f"{100 * abs(change):.0f}% {'faster' if change > 0 else 'slower'}"


def span(rows: list[dict], key: str, digits: int = 2, unit: str = "") -> str:
    """'lo{unit} (checkpoint, batch) to hi{unit} (checkpoint, batch)' over rows by `key`."""
    lo, hi = min(rows, key=lambda r: r[key]), max(rows, key=lambda r: r[key])
    return " to ".join(f"{r[key]:.{digits}f}{unit} ({r['checkpoint']}, batch {r['batch_size']})" for r in (lo, hi))


def table(header: list[str], align: str, rows: list[list]) -> list[str]:
    """A markdown table: `align` holds one character per column, 'l' or 'r'."""
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return ["| " + " | ".join(header) + " |", rule] + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
