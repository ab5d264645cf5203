"""The frame every reproduced experiment runs in: presets, data, cached models, results on disk.

An experiment is a function `run(ctx: Run) -> None` registered under a name. It gets its data and its
trained models through `ctx` (models are trained once into `<out>/models/` and reused after an
interruption, never retrained) and hands its table rows and figures back through `ctx`, which writes
`results.json` (with preset, seeds, versions and timing), `table.md` and PNG figures into `<out>`.
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .. import __version__
from .. import data as mfdata
from ..atomic import write_json, write_text
from ..errors import ModefuseError
from ..trained import trained

PRESETS = ("tiny", "quick", "full")


@dataclass
class Experiment:
    name: str
    summary: str
    run: Callable[["Run"], None]
    presets: dict[str, dict]


REGISTRY: dict[str, Experiment] = {}


def experiment(name: str, summary: str, presets: dict[str, dict]):
    """Register `run(ctx)` as experiment `name`; `presets` maps tiny/quick/full to its settings."""
    def deco(fn):
        REGISTRY[name] = Experiment(name, summary, fn, presets)
        return fn
    return deco


@dataclass
class Run:
    name: str
    preset: str
    out: Path
    data_dir: str | None = None
    progress: bool = True
    settings: dict = field(default_factory=dict)
    sections: list[tuple[str, list[str], list[list]]] = field(default_factory=list)
    results: dict = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    models: dict = field(default_factory=dict)  # tag -> recipe (architecture, seed, epochs, data size)

    @property
    def dataset_name(self) -> str:
        if self.preset == "full" and self.data_dir:
            return self.settings.get("full_dataset", "mnist")
        return "fashion-mnist"

    def data(self, split: str, dataset: str | None = None):
        ds = mfdata.load(dataset or self.dataset_name, split, self.data_dir)
        n = self.settings.get(f"n_{split}")
        return ds.subset(range(min(n, len(ds)))) if n else ds

    def model(self, tag: str, arch: str, train_data, seed: int, epochs: int, **kwargs):
        """Zoo model `arch` trained by this recipe: read from <out>/models/<tag>.safetensors when finished."""
        model_kwargs = kwargs.pop("model_kwargs", {})
        kwargs.setdefault("lr", self.settings.get("lr", 1e-3))
        self.models[tag] = {"arch": arch, "model_kwargs": model_kwargs, "seed": seed, "epochs": epochs,
                            "lr": kwargs["lr"], "n_train": len(train_data),
                            "adversarial": kwargs.get("perturb") is not None}
        return trained(self.out / "models" / f"{tag}.safetensors", arch, train_data, seed=seed, epochs=epochs,
                       progress=self.progress, model_kwargs=model_kwargs, **kwargs)

    def table(self, title: str, header: list[str], rows: list[list]) -> None:
        self.sections.append((title, header, rows))

    def figure(self, filename: str) -> Path:
        self.figures.append(filename)
        return self.out / filename

    def log(self, msg: str) -> None:
        if self.progress:
            print(f"[{self.name}] {msg}", flush=True)


_PERCENT = ("accuracy", "clean", "robust")


def _fmt(v, column: str) -> str:
    """Accuracies as percentages, other floats with 4 decimals."""
    if isinstance(v, float):
        return f"{100 * v:.1f}%" if any(w in column for w in _PERCENT) else f"{v:.4f}"
    return str(v)


def _load_all() -> None:
    """Import the experiment modules, which register themselves."""
    from . import curves_exp, federated, lmc_width, vit, wb  # noqa: F401


def reproduce(name: str, preset: str = "quick", out: str | Path | None = None, data_dir: str | None = None,
              progress: bool = True) -> Run:
    """Run experiment `name` with `preset` ("tiny", "quick", "full") and write its results into `out`."""
    _load_all()
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
