"""Results a paper can use: tidy tables and overlay plots over the runs of an experiment.

An experiment folder holds run folders (``<variant>/seed-<n>``, each with ``run.json`` naming
its variant and seed). :func:`collect_experiment` reads them into an :class:`Experiment`:

* ``runs``: one dict per finished run (variant keys, seed, final mean/min accuracy, time to
  0.8/0.9, bytes sent, delivery ratio, consensus distance, wall seconds);
* ``variants``: one dict per variant with the mean, standard deviation and 95 % confidence
  interval (Student's t, scipy.stats) of each of those metrics over its seeds.

Rows are plain lists of dicts: ``pandas.DataFrame(experiment.runs)`` works, pandas is not
needed. :meth:`Experiment.write` saves ``runs.csv``, ``variants.csv``, ``accuracy.png``
(accuracy over virtual time with CI bands per variant) and ``accuracy-bytes.png``.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from swarmfl.sim.runfolder import SUMMARY, is_finished

__all__ = ["METRICS", "RUN_FILE", "Experiment", "collect_experiment", "collect_folders", "interval"]

RUN_FILE = "run.json"
METRICS = (
    "final_mean_accuracy",
    "final_min_accuracy",
    "time_to_0.8",
    "time_to_0.9",
    "bytes_sent",
    "delivery_ratio",
    "consensus_distance",
)
"""The per-run metrics aggregated per variant (None where a run has no value, e.g. never 0.9)."""


def interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, float | None]:
    """Mean, sample standard deviation and the t-distribution confidence interval of ``values``.

    With one value the spread and the interval are None; with none, everything is None.
    """
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "ci95_low": None, "ci95_high": None}
    mean = float(np.mean(values))
    if n == 1:
        return {"mean": mean, "std": None, "ci95_low": None, "ci95_high": None}
    std = float(np.std(values, ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half}


def _run_row(folder: Path, keys: Sequence[str], label: str | None) -> dict[str, Any]:
    summary = json.loads((folder / SUMMARY).read_text(encoding="utf-8"))
    run_file = folder / RUN_FILE
    meta = json.loads(run_file.read_text(encoding="utf-8")) if run_file.is_file() else {}
    variant = meta.get("variant", {})
    row: dict[str, Any] = {"variant": label or meta.get("variant_name") or folder.name}
    for key in keys:
        row[key] = variant.get(key)
    tta = summary.get("time_to_accuracy", {})
    row.update(
        {
            "seed": summary.get("seed"),
            "final_mean_accuracy": summary["accuracy"]["mean"],
            "final_min_accuracy": summary["accuracy"]["min"],
            "time_to_0.8": tta.get("0.8"),
            "time_to_0.9": tta.get("0.9"),
            "bytes_sent": summary.get("bytes_sent"),
            "delivery_ratio": summary.get("delivery_ratio"),
            "consensus_distance": summary.get("consensus_distance"),
            "wall_seconds": summary.get("wall_seconds"),
            "folder": str(folder),
        }
    )
    return row


@dataclass
class Experiment:
    """The runs of an experiment (or of folders compared) and their per-variant aggregates."""

    folder: Path
    keys: list[str]
    runs: list[dict[str, Any]]
    failed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def variants(self) -> list[dict[str, Any]]:
        """One dict per variant: its keys, run count and ``<metric>_{mean,std,ci95_low,...}``.

        ``<metric>_n`` counts the runs that have a value (a run that never reached 0.9 has no
        time to 0.9).
        """
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in self.runs:
            groups[row["variant"]].append(row)
        table = []
        for name, rows in groups.items():
            entry: dict[str, Any] = {"variant": name}
            entry.update({key: rows[0].get(key) for key in self.keys})
            entry["runs"] = len(rows)
            for metric in METRICS:
                values = [float(r[metric]) for r in rows if r.get(metric) is not None]
                entry[f"{metric}_n"] = len(values)
                for stat, value in interval(values).items():
                    entry[f"{metric}_{stat}"] = value
            table.append(entry)
        return table

    def write(self, folder: Path | None = None) -> Path:
        """Write ``runs.csv``, ``variants.csv`` and the overlay plots; return the folder."""
        from swarmfl.sim.compare import plot_overlays

        folder = folder or self.folder
        folder.mkdir(parents=True, exist_ok=True)
        _write_csv(folder / "runs.csv", self.runs)
        _write_csv(folder / "variants.csv", self.variants)
        plot_overlays(self, folder)
        return folder


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})


def _run_folders(root: Path) -> list[Path]:
    """Finished run folders at or under ``root``, sorted."""
    if is_finished(root):
        return [root]
    return sorted(p.parent for p in root.rglob(SUMMARY) if p.parent != root)


def collect_experiment(folder: Path, *, keys: Sequence[str] = ()) -> Experiment:
    """The finished runs under an experiment ``folder`` (unfinished ones are left out)."""
    folder = Path(folder)
    found = list(keys)
    rows = []
    for run in _run_folders(folder):
        meta_file = run / RUN_FILE
        if meta_file.is_file() and not keys:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            found.extend(k for k in meta.get("variant", {}) if k not in found)
        rows.append(run)
    return Experiment(folder, found, [_run_row(run, found, None) for run in rows])


def collect_folders(paths: Iterable[Path], out: Path) -> Experiment:
    """Runs and experiments given on the command line, as one experiment written to ``out``.

    A run folder is its own variant (named by its folder); an experiment's variants keep their
    names, prefixed by the experiment's folder name when several folders are compared.
    """
    paths = [Path(p) for p in paths]
    rows: list[dict[str, Any]] = []
    keys: list[str] = []
    for path in paths:
        if is_finished(path):
            rows.append(_run_row(path, [], path.name))
            continue
        experiment = collect_experiment(path)
        keys.extend(k for k in experiment.keys if k not in keys)
        for row in experiment.runs:
            if len(paths) > 1:
                row["variant"] = f"{path.name}/{row['variant']}"
            rows.append(row)
    return Experiment(out, keys, rows)
