"""The registry of reproduced experiments and the frame each runs in: presets, data, cached models.

An experiment is a function `run(ctx: Run) -> None` registered under a name with `@experiment`. It gets
its data and its trained models through `ctx` (models are trained once into `<out>/models/` and reused
after an interruption, never retrained) and hands its table rows and figures back through `ctx`. The
package's `__init__` imports every experiment module, which fills `REGISTRY`; `runner.reproduce` runs one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..registry import Registry
from ..zoo import data as mfdata
from ..zoo.recipe import Recipe
from ..zoo.train_or_load import trained

PRESETS = ("tiny", "quick", "full")


@dataclass
class Experiment:
    name: str
    summary: str
    run: Callable[["Run"], None]
    presets: dict[str, dict]


REGISTRY: Registry[Experiment] = Registry("experiment")


def experiment(name: str, summary: str, presets: dict[str, dict]):
    """Register `run(ctx)` as experiment `name`; `presets` maps tiny/quick/full to its settings."""
    return REGISTRY.register(name, lambda fn: Experiment(name, summary, fn, presets))


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

    def recipe(self, seed: int = 0, **fields) -> Recipe:
        """This run's training recipe: the preset's lr (and optimizer), with `fields` replaced."""
        return Recipe(lr=self.settings.get("lr", 1e-3), optimizer=self.settings.get("optimizer", "adam"),
                      seed=seed).replace(**fields)

    def model(self, tag: str, arch: str, train_data, seed: int, epochs: int, model_kwargs: dict | None = None,
              perturb=None):
        """Zoo model `arch` trained by this run's recipe: read from <out>/models/<tag>.safetensors when finished."""
        model_kwargs = model_kwargs or {}
        recipe = self.recipe(seed, epochs=epochs)
        self.models[tag] = {"arch": arch, "model_kwargs": model_kwargs, "seed": seed, "epochs": epochs,
                            "lr": recipe.lr, "n_train": len(train_data), "adversarial": perturb is not None}
        return trained(self.out / "models" / f"{tag}.safetensors", arch, train_data, recipe,
                       progress=self.progress, model_kwargs=model_kwargs, perturb=perturb)

    def table(self, title: str, header: list[str], rows: list[list]) -> None:
        self.sections.append((title, header, rows))

    def figure(self, filename: str) -> Path:
        self.figures.append(filename)
        return self.out / filename

    def log(self, msg: str) -> None:
        if self.progress:
            print(f"[{self.name}] {msg}", flush=True)


