"""Running a registered experiment: results.json (with preset, seeds, versions and timing), table.md
and the PNG figures written into its output folder."""
from __future__ import annotations

import platform
import time
from pathlib import Path

import torch

from ..errors import ModefuseError
from ..storage.atomic import write_json, write_text
from ..version import __version__
from .base import PRESETS, REGISTRY, Run

_PERCENT = ("accuracy", "clean", "robust")


def _fmt(v, column: str) -> str:
    """Accuracies as percentages, other floats with 4 decimals."""
    if isinstance(v, float):
        return f"{100 * v:.1f}%" if any(w in column for w in _PERCENT) else f"{v:.4f}"
    return str(v)


def reproduce(name: str, preset: str = "quick", out: str | Path | None = None, data_dir: str | None = None,
              progress: bool = True) -> Run:
    """Run experiment `name` with `preset` ("tiny", "quick", "full") and write its results into `out`."""
    if name not in REGISTRY:
        raise ModefuseError(f"unknown experiment {name!r}; `modefuse reproduce --list` names them: "
                            f"{', '.join(REGISTRY)}")
    if preset not in PRESETS:
        raise ModefuseError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    exp = REGISTRY[name]
    run = Run(name, preset, Path(out or f"results/{name}"), data_dir, progress, dict(exp.presets[preset]))
    run.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    exp.run(run)
    meta = {"experiment": name, "summary": exp.summary, "preset": preset, "dataset": run.dataset_name,
            "settings": run.settings, "models": run.models, "seconds": round(time.perf_counter() - t0, 1),
            "versions": {"modefuse": __version__, "torch": torch.__version__, "python": platform.python_version()}}
    write_json(run.out / "results.json", {**meta, "results": run.results,
                                          "tables": [{"title": t, "header": h, "rows": r} for t, h, r in run.sections],
                                          "figures": run.figures})
    lines = [f"# {name}: {exp.summary}", "",
             f"Preset `{preset}` on {run.dataset_name}; {meta['seconds']} s; modefuse {__version__}, "
             f"torch {torch.__version__}.", ""]
    for title, header, rows in run.sections:
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_fmt(v, h) for v, h in zip(r, header)) + " |" for r in rows]
        lines.append("")
    lines += [f"![{f}]({f})" for f in run.figures]
    write_text(run.out / "table.md", "\n".join(lines) + "\n")
    return run
