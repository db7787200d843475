"""Run folders: when a run is finished, picking a fresh folder, and never overwriting silently.

A run is *finished* when its folder holds ``summary.json``: the runner writes it last, and
atomically (a temporary file renamed into place), so a run killed half-way leaves no summary and
a re-run (``swarmfl sim --out``, or a resumed sweep) starts it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["SUMMARY", "fresh_folder", "is_finished", "override_note"]

SUMMARY = "summary.json"
"""The file whose presence marks a finished run."""


def is_finished(folder: Path) -> bool:
    """Whether ``folder`` holds a finished run (its ``summary.json`` exists)."""
    return (folder / SUMMARY).is_file()


def fresh_folder(base: Path) -> Path:
    """``base`` if nothing is there yet, else the first free ``base-2``, ``base-3``, ..."""
    if not base.exists():
        return base
    index = 2
    while True:
        candidate = base.with_name(f"{base.name}-{index}")
        if not candidate.exists():
            return candidate
        index += 1


def override_note(overrides: Sequence[str]) -> str:
    """The overrides as a plot title's tail: ``" · radio.loss=0.3, churn.enabled=true"``."""
    cleaned = [text.replace(" ", "") for text in overrides]
    return f" · {', '.join(cleaned)}" if cleaned else ""
