"""Federated fusion on Flower: a strategy whose aggregation is `mf.fuse`, and the apps that run it.

FedAvg is vanilla averaging: it fails when the clients' models are not aligned (different
initializations, one-shot rounds) and cannot mix widths. `FedFusion` keeps Flower's round loop,
sampling and metric aggregation (it subclasses Flower's `FedAvg`) and replaces only
`aggregate_train`: the clients' `ArrayRecord`s become models, fused with `mf.fuse` (OTFusion or the
Wasserstein barycenter, weights = examples per client, optionally REPAIR on a server-side batch).
A reply that is not a model of the expected architecture (missing record, wrong shapes, NaN) is
left out of the round, with a log line naming the node; the round goes on with the others.

`client_app(...)` and `server_app(...)` build the `ClientApp` (a zoo model trained on its shard of
`mf.data.split`) and the `ServerApp` (the strategy, centralized test evaluation every round);
`simulate(...)` runs them on Flower's simulation engine (Ray). Needs `pip install 'modefuse[flower]'`.
"""
from __future__ import annotations

import json
from datetime import datetime
import time
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Iterable

import torch
from torch import nn

try:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.common.logger import log
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("modefuse.flower needs Flower: pip install 'modefuse[flower]' (flwr[simulation])") from e

from ..zoo import data as mfdata
from ..zoo import models as zoo
from ..errors import ModefuseError
from ..merge.fuse import fuse
from ..merge.repair import repair
from ..storage.statedict import check_finite, check_same_architecture
from ..zoo.recipe import Recipe
from ..zoo.training import evaluate, train

METHODS = ("average", "otfusion", "wasserstein", "regmean", "zipit", "heterofl")
READS_DATA = ("regmean", "zipit")  # methods that read the models on the server's batch whatever the cost
ACROSS_WIDTHS = ("wasserstein", "heterofl")  # the methods that take clients of other widths than the server's


def _average(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """sum_i w_i x_i / sum_i w_i per tensor (FedAvg's aggregate)."""
    total = sum(weights)
    return {k: sum(w / total * s[k].double() for w, s in zip(weights, states)).to(states[0][k].dtype)
            for k in states[0]}


class FedFusion(FedAvg):
    """FedAvg's round loop with `mf.fuse` as the aggregation.

    template: a model of the server's architecture (the fused model's); method: "average",
    "otfusion", "wasserstein" (clients of any widths, fused into the server's), "regmean" or "zipit"
    (RegMean after alignment, ZipIt!; both read the clients' models on `data`), or "heterofl" (the
    baseline for clients of smaller widths: each holds the leading units of every layer, and every entry
    is averaged over the clients holding it; Diao et al. 2021); cost: fusion cost ("weight", or "activation" with `data`; for "regmean", how the clients are aligned); data:
    a server-side batch of inputs (activation cost, REPAIR); repair: REPAIR the fused model on `data`.
    Other keyword arguments go to Flower's FedAvg (fraction_train, min_train_nodes, ...).
    """

    def __init__(self, template: nn.Module, method: str = "wasserstein", cost: str = "weight", data=None,
                 repair: bool = False, **kwargs):
        super().__init__(**kwargs)
        if method not in METHODS:
            raise ModefuseError(f"unknown fusion method {method!r}; use one of {', '.join(METHODS)}")
        if (repair or cost == "activation" or method in READS_DATA) and data is None:
            raise ModefuseError(f"REPAIR, the activation cost and {' and '.join(READS_DATA)} need a server-side "
                                f"batch: pass data=")
        self.template, self.method, self.cost, self.data, self.repair = template, method, cost, data, repair
        self.left_out: dict[int, list[str]] = {}  # round -> why each left-out reply was left out
        self.received: tuple[list[nn.Module], list[float]] = ([], [])  # the last round's client models, weights
        self.seconds: dict[int, dict[str, float]] = {}  # round -> {"fusion": ..., "clients": ...}
        self.current: dict[str, torch.Tensor] | None = None  # the global model of the round (sent to clients)

    def client_model(self, msg: Message) -> tuple[nn.Module, float]:
        """The model a reply carries and its weight (examples trained on); ModefuseError if it is not one.

        A reply may declare its architecture (ConfigRecord "arch": zoo name and JSON kwargs, for clients of
        other widths); its arrays must fit it, and only "wasserstein" fuses widths other than the server's.
        """
        content = msg.content
        if self.arrayrecord_key not in content.array_records:
            raise ModefuseError(f"no ArrayRecord {self.arrayrecord_key!r} in the reply")
        arch = content.config_records.get("arch")
        model = _fresh(self.template)
        if arch is not None:
            mine = getattr(self.template, "arch", {}).get("name")
            if arch["name"] != mine:
                raise ModefuseError(f"the client trained a {arch['name']!r}, the server fuses {mine!r} models")
            model = zoo.build(arch["name"], **json.loads(arch["kwargs"]))
        state = content[self.arrayrecord_key].to_torch_state_dict()
        check_same_architecture(model.state_dict(), state, "the architecture the client declared",
                                "the client's arrays")
        check_finite(state, "the client's model")
        if self.method not in ACROSS_WIDTHS:
            check_same_architecture(self.template.state_dict(), state, "the server's model", "the client's model")
        if self.method == "heterofl":
            wider = [k for k, v in self.template.state_dict().items()
                     if k not in state or any(a > b for a, b in zip(state[k].shape, v.shape))]
            if wider:
                raise ModefuseError(f"HeteroFL takes clients no wider than the server: tensor {wider[0]!r}")
        model.load_state_dict(state)
        metrics = list(content.metric_records.values())
        n = float(metrics[0].get(self.weighted_by_key, 1.0)) if metrics else 1.0
        if not n > 0:
            raise ModefuseError(f"{self.weighted_by_key!r} must be positive, got {n}")
        return model, n

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True, validate=False)
        valid = sorted(valid, key=_client_order)  # fusion is order-dependent (model 0 anchors it): fix the order
        models, weights, kept = [], [], []
        for msg in valid:
            try:
                model, n = self.client_model(msg)
            except (ModefuseError, KeyError, ValueError, RuntimeError) as e:
                why = f"node {msg.metadata.src_node_id}: {e}"
                self.left_out.setdefault(server_round, []).append(why)
                log(WARNING, "FedFusion round %s: reply left out, %s", server_round, why)
                continue
            models.append(model)
            weights.append(n)
            kept.append(msg)
        if not models:
            return None, None
        log(INFO, "FedFusion round %s: %s of %s fused with %s", server_round, len(models), len(valid), self.method)
        self.received = (models, weights)
        t0 = time.perf_counter()
        fused = self.fuse(models, weights)
        self.seconds[server_round] = {"fusion": time.perf_counter() - t0, **_reply_timing(kept)}
        metrics = self.train_metrics_aggr_fn([m.content for m in kept], self.weighted_by_key)
        return ArrayRecord(fused.state_dict()), metrics

    def configure_train(self, server_round: int, arrays: ArrayRecord, config, grid):
        """FedAvg's, remembering the global model sent (HeteroFL keeps its entries no client holds) and
        telling clients of other widths how to take it: "slice" (HeteroFL) or "fuse" (its WB projection)."""
        self.current = arrays.to_torch_state_dict()
        config["width-mode"] = "slice" if self.method == "heterofl" else "fuse"
        return super().configure_train(server_round, arrays, config, grid)

    def fuse(self, models: list[nn.Module], weights: list[float]) -> nn.Module:
        """The server's model from the clients' (in the server's architecture)."""
        target = self.template.state_dict()
        if self.method == "heterofl":
            model = _fresh(self.template)
            model.load_state_dict(_slice_average([m.state_dict() for m in models], weights,
                                                 self.current or target))
            return model
        same = all(m.state_dict()[k].shape == t.shape for m in models for k, t in target.items())
        if self.method == "average" or len(models) == 1:
            if not same:
                raise ModefuseError("averaging needs every client at the server's widths; use 'wasserstein'")
            model = _fresh(self.template)
            model.load_state_dict(_average([m.state_dict() for m in models], weights))
            return model
        widths = None if same else [self.template.state_dict()[k].shape[0] for k in _width_keys(self.template)]
        fus = fuse(models, method=self.method, cost=self.cost, weights=weights, widths=widths, data=self.data,
                   progress=False)
        if self.repair:
            return repair(fus.model, models, self.data, weights=[w / sum(weights) for w in weights],
                          couplings=fus.couplings)
        return fus.model


def _slice_average(states: list[dict[str, torch.Tensor]], weights: list[float],
                   current: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HeteroFL's aggregate (Diao et al. 2021): a client of smaller width holds the leading slice of every
    tensor; each entry of the server's model is the weighted mean over the clients holding it, and keeps its
    current value where none does."""
    out = {}
    for k, cur in current.items():
        acc = torch.zeros(cur.shape, dtype=torch.float64)
        mass = torch.zeros(cur.shape, dtype=torch.float64)
        for w, st in zip(weights, states):
            sl = _leading(st[k].shape)
            acc[sl] += w * st[k].double()
            mass[sl] += w
        out[k] = torch.where(mass > 0, acc / mass.clamp_min(1e-300), cur.double()).to(cur.dtype)
    return out


def _leading(shape) -> tuple[slice, ...]:
    """The leading slice of a larger tensor that a tensor of `shape` occupies (HeteroFL's nested widths)."""
    return tuple(slice(0, n) for n in shape)


def _client_order(msg: Message) -> tuple[int, int]:
    """Replies in the order of their clients' partitions (else node ids), whatever order they arrived in."""
    client = msg.content.config_records.get("client")
    return (0, int(client["partition-id"])) if client and "partition-id" in client else (1, msg.metadata.src_node_id)


def _reply_timing(replies: list[Message]) -> dict[str, float]:
    """A round's time split from the replies: clients' training (sum, slowest) and, per message on average,
    the instruction's wait for a worker and its delivery, and the reply's transfer (created on the client ->
    delivered to the server: Flower's own timestamps; the server polls for replies)."""
    rows = [list(m.content.metric_records.values())[0] for m in replies]
    train = [float(r.get("train-seconds", 0.0)) for r in rows]
    uplink = [_stamp(m.metadata.delivered_at) - m.metadata.created_at for m in replies]

    def mean(xs):
        return sum(xs) / len(xs) if xs else float("nan")
    return {"clients": sum(train), "slowest client": max(train),
            "queued": mean([float(r.get("queued-seconds", float("nan"))) for r in rows]),
            "to client": mean([float(r.get("receive-seconds", float("nan"))) for r in rows]),
            "to server": mean(uplink)}


def _fresh(template: nn.Module) -> nn.Module:
    arch = getattr(template, "arch", None)
    if arch:
        return zoo.build(arch["name"], **arch["kwargs"])
    import copy
    return copy.deepcopy(template)


def _width_keys(model: nn.Module) -> list[str]:
    """The weights whose rows are the hidden widths, in the order `fuse(widths=...)` takes them (MLPs)."""
    keys = [k for k, v in model.state_dict().items() if k.endswith("weight") and v.dim() == 2]
    return keys[:-1]


# ---------------------------------------------------------------- apps
@dataclass
class Settings:
    """What every client and the server need to know: the model, the data split and the local recipe."""

    model: str = "mlp"
    model_kwargs: dict = field(default_factory=lambda: {"widths": [400, 200, 100]})
    client_kwargs: list[dict] = field(default_factory=list)  # per client (cycled): heterogeneous widths
    split: str = "dirichlet"
    alpha: float = 0.5
    label_classes: int = 0  # label split: classes per client (0: disjoint label sets)
    seed: int = 0
    local_epochs: int = 1
    lr: float = 1e-3
    batch_size: int = 128
    independent_init: bool = False  # round 1: each client starts from its own initialization (one-shot)
    n_train: int | None = None
    n_test: int | None = None
    data_dir: str | None = None

    @classmethod
    def from_config(cls, config) -> "Settings":
        """Settings from a Flower run config ([tool.flwr.app.config] of a Flower app: kebab-case keys,
        JSON for the model's keyword arguments)."""
        s = cls()
        for f in s.__dataclass_fields__:
            key = f.replace("_", "-")
            if key in config:
                value = config[key]
                if f in ("model_kwargs", "client_kwargs"):
                    value = json.loads(value)
                elif f in ("n_train", "n_test"):
                    value = int(value) or None  # 0: all of it
                setattr(s, f, value)
        return s

    def local_recipe(self, server_round: int, client: int) -> Recipe:
        """The recipe a client trains by in a round (its own seed per round and client)."""
        return Recipe(epochs=self.local_epochs, lr=self.lr, batch_size=self.batch_size,
                      seed=self.seed + 1000 * server_round + client)

    def kwargs_for(self, client: int) -> dict:
        extra = self.client_kwargs[client % len(self.client_kwargs)] if self.client_kwargs else {}
        return {**self.model_kwargs, **extra}


_DATA: dict = {}


def _data(s: Settings, split: str):
    key = (split, s.n_train if split == "train" else s.n_test, s.data_dir)
    if key not in _DATA:
        ds = mfdata.load("fashion-mnist", split, s.data_dir)
        n = s.n_train if split == "train" else s.n_test
        _DATA[key] = ds.subset(range(min(n, len(ds)))) if n else ds
    return _DATA[key]


def client_app(settings: Settings | None = None) -> ClientApp:
    """Each client trains the zoo model on its shard (`mf.data.split`, by partition id) and replies
    with its weights, its architecture and the examples it trained on. Without `settings`, they are
    read from the run config (a Flower app run with `flwr run`)."""
    app = ClientApp()

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        s = settings or Settings.from_config(context.run_config)
        torch.set_num_threads(1)  # clients share the machine's cores
        started = time.time()
        pid, k = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
        shard = _shard(s, k, pid)
        server_round = int(msg.content["config"].get("server-round", 1))
        kwargs = s.kwargs_for(pid)
        model = zoo.build_for(s.model, shard, seed=s.seed + pid if s.independent_init else s.seed, **kwargs)
        incoming = msg.content["arrays"].to_torch_state_dict()
        if not (s.independent_init and server_round == 1):
            model.load_state_dict(_to_width(incoming, model, s, shard,
                                             str(msg.content["config"].get("width-mode", "fuse"))))
        t0 = time.perf_counter()
        hist = train(model, shard, s.local_recipe(server_round, pid), progress=False)
        seconds = time.perf_counter() - t0
        loss = float(hist[-1]["train_loss"]) if hist else float("nan")
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                              "metrics": MetricRecord({"train_loss": loss, "num-examples": len(shard),
                                                       "train-seconds": seconds,
                                                       **_instruction_timing(msg, started)}),
                              "arch": ConfigRecord({"name": model.arch["name"],
                                                    "kwargs": json.dumps(model.arch["kwargs"])}),
                              "client": ConfigRecord({"partition-id": pid})})
        return Message(content=content, reply_to=msg)

    return app


def _shard(s: Settings, k: int, pid: int):
    """Client `pid`'s shard of the training data. (At module level: Ray pickles the client's closure
    by value, and an attribute named like a torch submodule there, `s.classes`, drags `torch.classes` in.)"""
    return mfdata.split(_data(s, "train"), k, s.split, s.alpha, seed=s.seed, classes=s.label_classes or None)[pid]


def _stamp(iso: str) -> float:
    """A Flower delivery time (ISO 8601, set by the link when a message is pulled) in seconds since the epoch."""
    return datetime.fromisoformat(iso).timestamp() if iso else float("nan")


def _instruction_timing(msg: Message, started: float) -> dict[str, float]:
    """From Flower's own timestamps of the server's instruction: how long it waited for this node to pull
    it (created -> delivered: a free worker, when clients outnumber them) and how long from delivery to the
    client's code (transfer and deserialization)."""
    delivered = _stamp(msg.metadata.delivered_at)
    return {"queued-seconds": delivered - msg.metadata.created_at, "receive-seconds": started - delivered}


def _to_width(state: dict[str, torch.Tensor], model: nn.Module, s: Settings, data,
              mode: str = "fuse") -> dict[str, torch.Tensor]:
    """The server's model in this client's widths: itself when they agree, else its Wasserstein
    projection onto the client's widths (`mf.fuse` of one model into other widths), or with
    `mode="slice"` (HeteroFL, as the server's instruction says) its leading units."""
    mine = model.state_dict()
    if all(k in state and state[k].shape == v.shape for k, v in mine.items()):
        return state
    if mode == "slice":  # HeteroFL: the leading units of every layer
        return {k: state[k][_leading(v.shape)].clone() for k, v in mine.items()}
    server = zoo.build_for(s.model, data, seed=s.seed, **s.model_kwargs)
    server.load_state_dict(state)
    widths = [mine[k].shape[0] for k in _width_keys(model)]
    return fuse([server], method="wasserstein", cost="weight", widths=widths, progress=False).model.state_dict()


@dataclass
class History:
    """Centralized test accuracy and loss after each round (round 0: the initial model), and the
    replies left out per round."""

    accuracy: dict[int, float] = field(default_factory=dict)
    loss: dict[int, float] = field(default_factory=dict)
    left_out: dict[int, list[str]] = field(default_factory=dict)
    seconds: dict[int, dict[str, float]] = field(default_factory=dict)  # round -> fusion, clients, round
    clients: tuple = ((), ())  # the last round's client models and weights (examples)


def serve(grid: Grid, s: Settings, method: str, rounds: int, num_clients: int, history: History,
          cost: str = "weight", repair: bool = False, fraction: float = 1.0) -> None:
    """The server's work: `FedFusion` for `rounds` rounds, the global model tested after each."""
    test = _data(s, "test")
    template = zoo.build_for(s.model, test, seed=s.seed, **s.model_kwargs)
    server_batch = (_data(s, "train").subset(range(1000))
                    if repair or cost == "activation" or method in READS_DATA else None)
    strategy = FedFusion(template, method=method, cost=cost, data=server_batch, repair=repair,
                         fraction_train=fraction, fraction_evaluate=0.0, min_train_nodes=1, min_evaluate_nodes=0,
                         min_available_nodes=num_clients)

    def centralized(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = _fresh(template)
        model.load_state_dict(arrays.to_torch_state_dict())
        res = evaluate(model, test)
        history.accuracy[server_round], history.loss[server_round] = res["accuracy"], res["loss"]
        return MetricRecord({"accuracy": res["accuracy"], "loss": res["loss"]})

    t_round = [time.perf_counter()]

    def centralized_timed(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        now = time.perf_counter()
        if server_round:
            history.seconds[server_round] = {**strategy.seconds.get(server_round, {}), "round": now - t_round[0]}
        res = centralized(server_round, arrays)
        t_round[0] = time.perf_counter()
        return res

    strategy.start(grid=grid, initial_arrays=ArrayRecord(template.state_dict()), num_rounds=rounds,
                   evaluate_fn=centralized_timed)
    history.left_out.update(strategy.left_out)
    history.clients = strategy.received


def server_app(s: Settings | None = None, method: str = "wasserstein", rounds: int = 1, num_clients: int = 10,
               history: History | None = None, cost: str = "weight", repair: bool = False,
               fraction: float = 1.0) -> ServerApp:
    """The `ServerApp` running `serve`. Without `s`, everything is read from the run config (keys as in
    `Settings.from_config`, plus num-server-rounds, method, cost, repair, fraction-train)."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        if s is not None:
            serve(grid, s, method, rounds, num_clients, history if history is not None else History(), cost,
                  repair, fraction)
            return
        c = context.run_config
        serve(grid, Settings.from_config(c), str(c.get("method", method)), int(c.get("num-server-rounds", rounds)),
              len(list(grid.get_node_ids())), History(), str(c.get("cost", cost)), bool(c.get("repair", repair)),
              float(c.get("fraction-train", fraction)))

    return app


def simulate(s: Settings, method: str = "wasserstein", rounds: int = 1, num_clients: int = 10,
             cost: str = "weight", repair: bool = False, fraction: float = 1.0,
             cpus_per_client: float = 1.0) -> History:
    """Run the apps on Flower's simulation engine (Ray), each client bounded to `cpus_per_client`."""
    from flwr.simulation import run_simulation
    history = History()
    run_simulation(server_app=server_app(s, method, rounds, num_clients, history, cost, repair, fraction),
                   client_app=client_app(s), num_supernodes=num_clients,
                   backend_config={"client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
                                   "init_args": {"include_dashboard": False}})
    return history
