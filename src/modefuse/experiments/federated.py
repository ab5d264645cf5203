"""Federated fusion on Flower's simulation engine (the WB paper's motivation, Akash et al. 2023):
FedAvg against OTFusion and Wasserstein-barycenter aggregation, one-shot and over rounds."""
from __future__ import annotations

import time

import torch
from torch import nn

from ..zoo.models import build_for
from ..landscape.plots import plt, save_figure
from ..zoo.training import evaluate
from .base import Run, experiment

METHODS = ("average", "otfusion", "wasserstein")
LABEL = {"average": "FedAvg", "otfusion": "FedOTFusion", "wasserstein": "FedWB"}
ONE_SHOT = (("FedAvg", "average", {}), ("FedOTFusion", "otfusion", {}), ("FedWB", "wasserstein", {}),
            ("FedOTFusion, activation cost", "otfusion", {"cost": "activation"}),
            ("FedWB, activation cost", "wasserstein", {"cost": "activation"}),
            ("FedWB + REPAIR", "wasserstein", {"repair": True}),
            ("FedRegMean + REPAIR", "regmean", {"repair": True, "cost": "activation"}),
            ("FedZipIt + REPAIR", "zipit", {"repair": True}))


def _settings(ctx: Run, **kw):
    from ..federated.flower import Settings  # the flower extra: imported when the experiment runs
    s = ctx.settings
    return Settings(model_kwargs={"widths": s["widths"]}, n_train=s.get("n_train"), n_test=s.get("n_test"),
                    alpha=s["alpha"], **kw)


@experiment("fed-fusion", "federated learning on Flower's simulation engine: FedAvg vs FedOTFusion vs FedWB, "
            "one-shot (clients from different initializations; dirichlet and 2-classes-per-client label splits) "
            "and over rounds "
            "(common initialization), with the time per round and the fusion time as the clients grow",
            {"tiny": {"clients": 3, "rounds": 2, "widths": [32], "alpha": 0.5, "oneshot_epochs": 1,
                      "n_train": 1500, "n_test": 500, "scale": [3, 6]},
             "quick": {"clients": 10, "rounds": 5, "widths": [400, 200, 100], "alpha": 0.5, "oneshot_epochs": 5,
                       "n_test": 5000, "scale": [10, 30, 100]},
             "full": {"clients": 10, "rounds": 30, "widths": [400, 200, 100], "alpha": 0.5, "oneshot_epochs": 5,
                      "scale": [10, 30, 100]}})
def fed_fusion(ctx: Run) -> None:
    test = ctx.data("test")
    _one_shot(ctx, test)
    _over_rounds(ctx, test)
    _heterogeneous(ctx)
    _scale(ctx)


def _one_shot(ctx: Run, test) -> None:
    """Each client trains from its own initialization; the server fuses once (the same client models for
    every method: the round runs once and the strategy's aggregation is applied every way)."""
    from ..federated.flower import FedFusion, simulate
    s = ctx.settings
    rows = []
    for split in ("dirichlet", "labels"):
        h = simulate(_settings(ctx, split=split, label_classes=2 if split == "labels" else 0, independent_init=True,
                               local_epochs=s["oneshot_epochs"]),
                     method="average", rounds=1, num_clients=s["clients"])
        models, weights = h.clients
        template = build_for("mlp", test, widths=s["widths"])
        server_batch = ctx.data("train").subset(range(1000))  # a small public batch on the server
        accs = {}
        for label, m, kw in ONE_SHOT:
            strategy = FedFusion(template, method=m, **({"data": server_batch} if kw else {}), **kw)
            accs[label] = evaluate(strategy.fuse(list(models), list(weights)), test)["accuracy"]
        clients = [evaluate(m, test)["accuracy"] for m in models]
        mean = sum(clients) / len(clients)
        ensemble = evaluate(_Ensemble(models), test)["accuracy"]
        rows += [[split, "clients' mean", mean, ""], [split, "clients' ensemble (not one model)", ensemble,
                                                       ensemble - accs["FedAvg"]]]
        rows += [[split, label, a, a - accs["FedAvg"]] for label, a in accs.items()]
        ctx.results.setdefault("one_shot", {})[split] = {"clients_mean": mean, "ensemble": ensemble, **accs}
        ctx.log(f"one-shot {split}: " + ", ".join(f"{label} {100 * a:.1f}%" for label, a in accs.items()))
    ctx.table(f"One-shot federated fusion ({s['clients']} clients from different initializations; the "
              f"activation cost and REPAIR use 1,000 training images on the server)",
              ["split", "aggregation", "test accuracy", "accuracy above FedAvg"], rows)



class _Ensemble(nn.Module):
    """The clients' predicted probabilities averaged (returned as logs): K models at inference, the reference
    a one-shot fusion of them into one model is read against."""

    def __init__(self, models):
        super().__init__()
        self.members = nn.ModuleList(models)

    def forward(self, x):
        return torch.stack([m(x).softmax(-1) for m in self.members]).mean(0).log()


def _over_rounds(ctx: Run, test) -> None:
    """A common initialization, one local epoch per round; rounds to 85% of a centralized model."""
    from ..federated.flower import simulate
    from ..zoo.training import train
    s = ctx.settings
    curves, rows = {}, []
    central = build_for("mlp", test, seed=0, widths=s["widths"])
    train(central, ctx.data("train"), ctx.recipe(epochs=s["rounds"]), progress=False)
    target = 0.85 * evaluate(central, test)["accuracy"]
    for m in METHODS:
        h = simulate(_settings(ctx, split="dirichlet"), method=m, rounds=s["rounds"], num_clients=s["clients"])
        curves[m] = h.accuracy
        reach = next((r for r in sorted(h.accuracy) if h.accuracy[r] >= target), None)
        fusion = sum(v.get("fusion", 0) for v in h.seconds.values()) / max(1, len(h.seconds))
        rows.append([LABEL[m], h.accuracy[s["rounds"]], max(h.accuracy.values()),
                     reach if reach is not None else f"> {s['rounds']}", fusion])
        ctx.results.setdefault("rounds", {})[m] = {"accuracy": h.accuracy, "seconds": h.seconds}
        ctx.log(f"{LABEL[m]}: final {100 * h.accuracy[s['rounds']]:.1f}%, 85% of centralized at round {reach}")
    ctx.results["centralized_accuracy"] = target / 0.85
    ctx.table(f"Over rounds ({s['clients']} clients, dirichlet {s['alpha']}, common initialization, one local "
              f"epoch per round; centralized model {100 * target / 0.85:.1f}%, 85% of it {100 * target:.1f}%)",
              ["method", "final accuracy", "best accuracy", "rounds to 85% of centralized", "fusion s per round"],
              rows)
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, acc in curves.items():
        ax.plot(sorted(acc), [100 * acc[r] for r in sorted(acc)], marker="o", label=LABEL[m])
    ax.axhline(100 * target, color="gray", ls="--", lw=1, label="85% of centralized")
    ax.set(xlabel="round", ylabel="global model test accuracy (%)", title="Federated fusion over rounds")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, ctx.figure("accuracy_per_round.png"))



def _heterogeneous(ctx: Run) -> None:
    """Clients of two widths (half the server's, half of half its units), a common initialization: FedWB
    fuses them into the server's width and sends each its WB projection; HeteroFL (Diao et al. 2021) averages
    the slices they share and sends each the leading units."""
    from ..federated.flower import simulate
    s = ctx.settings
    small = [max(1, w // 2) for w in s["widths"]]
    rows, res = [], {}
    for label, method in (("FedWB", "wasserstein"), ("HeteroFL", "heterofl")):
        h = simulate(_settings(ctx, split="dirichlet", client_kwargs=[{"widths": s["widths"]}, {"widths": small}]),
                     method=method, rounds=s["rounds"], num_clients=s["clients"])
        res[label] = {"accuracy": h.accuracy, "seconds": h.seconds}
        rounds = sorted(r for r in h.accuracy if r)
        fusion = sum(v.get("fusion", 0) for v in h.seconds.values()) / max(1, len(h.seconds))
        rows.append([label] + [h.accuracy[r] for r in rounds] + [fusion])
        ctx.log(f"heterogeneous {label}: " + ", ".join(f"{100 * h.accuracy[r]:.1f}%" for r in rounds))
    ctx.results["heterogeneous"] = res
    widths = "-".join(map(str, s["widths"]))
    ctx.table(f"Clients of two widths ({s['clients']} clients, half {widths}, half {'-'.join(map(str, small))}; "
              f"server {widths}; dirichlet {s['alpha']}, common initialization, one local epoch per round)",
              ["method"] + [f"accuracy after round {r}" for r in range(1, s["rounds"] + 1)] + ["fusion s per round"],
              rows)


def _scale(ctx: Run) -> None:
    """One round with many clients: the round's time split, and the fusion time as the number of models grows."""
    from ..federated.flower import simulate
    s = ctx.settings
    rows = []
    for k in s["scale"]:
        t0 = time.perf_counter()
        h = simulate(_settings(ctx, split="iid"), method="wasserstein", rounds=1, num_clients=k)
        wall = time.perf_counter() - t0
        sec = h.seconds.get(1, {})
        nan = float("nan")
        rows.append([k, wall, sec.get("round", nan), sec.get("clients", nan), sec.get("slowest client", nan),
                     sec.get("fusion", nan), sec.get("queued", nan), sec.get("to client", nan),
                     sec.get("to server", nan)])
        ctx.results.setdefault("scale", {})[k] = {"wall": wall, **sec}
        ctx.log(f"{k} clients: round {sec.get('round', nan):.1f} s, fusion {sec.get('fusion', nan):.2f} s")
    ctx.table("One round with K clients (iid shards, FedWB): time split; the last three from Flower's own message "
              "timestamps, per message on average", [
                  "clients", "simulation wall s (Ray start included)", "round s", "client training s (sum)",
                  "slowest client s", "fusion s", "instruction created to delivered s", "instruction delivered to "
                  "the client's code s", "reply created to delivered to the server s"], rows)
