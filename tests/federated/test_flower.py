"""Federated fusion on Flower: the strategy's aggregation on hand-made replies, and a small simulation."""
import json
import math
import logging

import numpy as np
import pytest
import torch

import modefuse as mf

flwr = pytest.importorskip("flwr", reason="Flower is in the test set-up: pip install -e '.[test,flower]'")
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

from modefuse.federated.flower import FedFusion, Settings, simulate  # noqa: E402


@pytest.fixture(autouse=True)
def _task_identity():
    """Messages made outside a Flower run need a run, node and task id (the SuperLink sets them in a run)."""
    from flwr.supercore.task_identity import TaskIdentity
    saved = TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def _mlp(seed, widths=(24, 12)):
    return mf.models.build("mlp", widths=list(widths), in_features=784, seed=seed)


def _reply(node: int, model=None, n=100, content=None, declared=None):
    """A client's reply: its arrays, metrics and declared architecture (`declared`: other kwargs than its own)."""
    instruction = Message(content=RecordDict(), dst_node_id=node, message_type="train")
    if content is None:
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                              "metrics": MetricRecord({"num-examples": n, "train_loss": 0.1 * node}),
                              "arch": ConfigRecord({"name": "mlp",
                                                    "kwargs": json.dumps(declared or model.arch["kwargs"])})})
    return Message(content=content, reply_to=instruction)


def _state(arrays: ArrayRecord):
    return arrays.to_torch_state_dict()


@pytest.mark.parametrize("method", ["wasserstein", "regmean", "zipit"])
def test_the_strategys_aggregate_is_mf_fuse_of_the_client_models_weighted_by_examples(method):
    models, sizes = [_mlp(s) for s in range(3)], [100, 300, 200]
    replies = [_reply(i + 1, m, n) for i, (m, n) in enumerate(zip(models, sizes))]
    batch = torch.rand(64, 1, 28, 28)  # the server's batch, for the methods that read the models on data
    data = batch if method in ("regmean", "zipit") else None
    strategy = FedFusion(_mlp(9), method=method, data=data)
    arrays, metrics = strategy.aggregate_train(1, replies)
    expected = mf.fuse(models, method=method, cost="weight", weights=sizes, data=data, progress=False).model
    for k, v in expected.state_dict().items():
        assert torch.equal(_state(arrays)[k], v), k
    assert metrics["train_loss"] == pytest.approx((100 * 0.1 + 300 * 0.2 + 200 * 0.3) / 600)


def test_the_aggregate_does_not_depend_on_the_order_replies_arrive_in():
    """Fusion anchors on model 0: replies are put in their clients' partition order before fusing."""
    models = [_mlp(s) for s in range(3)]

    def reply(pid):
        r = _reply(pid + 1, models[pid])
        r.content["client"] = ConfigRecord({"partition-id": pid})
        return r
    first = FedFusion(_mlp(9), method="wasserstein").aggregate_train(1, [reply(p) for p in (0, 1, 2)])[0]
    again = FedFusion(_mlp(9), method="wasserstein").aggregate_train(1, [reply(p) for p in (2, 0, 1)])[0]
    for k, v in _state(first).items():
        assert torch.equal(_state(again)[k], v), k


def test_heterofl_averages_the_slices_the_clients_share():
    """The HeteroFL baseline: a smaller client holds the leading units of every layer; each entry is the
    example-weighted mean over the clients holding it, the rest are the larger client's."""
    big, small = _mlp(0, (24, 12)), _mlp(1, (12, 6))
    strategy = FedFusion(_mlp(9), method="heterofl")
    arrays, _ = strategy.aggregate_train(1, [_reply(1, big, 100), _reply(2, small, 300),
                                             _reply(3, _mlp(2, (32, 12)), 50)])
    st, b, sm = _state(arrays), big.state_dict(), small.state_dict()
    for k, v in b.items():
        sl = tuple(slice(0, n) for n in sm[k].shape)
        expected = v.clone()
        expected[sl] = (100 * v[sl].double() + 300 * sm[k].double()).div(400).float()
        assert torch.allclose(st[k], expected, atol=1e-7), k
    assert not torch.equal(st["layers.2.weight"][:, :6], b["layers.2.weight"][:, :6])
    assert "no wider than the server" in strategy.left_out[1][0]  # the 32-unit client


def test_the_server_tells_clients_how_to_take_its_model_in_their_width():
    """HeteroFL's clients take the leading units ("slice"), FedWB's its WB projection ("fuse")."""
    from modefuse.federated.flower import _to_width

    class Grid:  # the part of Flower's Grid that sampling reads
        def get_node_ids(self):
            return [1, 2]
    server = _mlp(0, (24, 12))
    for method, mode in (("heterofl", "slice"), ("wasserstein", "fuse")):
        msgs = list(FedFusion(_mlp(9), method=method).configure_train(1, ArrayRecord(server.state_dict()),
                                                                      ConfigRecord(), Grid()))
        assert [m.content["config"]["width-mode"] for m in msgs] == [mode, mode]
    small = _mlp(1, (12, 6))
    sliced = _to_width(server.state_dict(), small, Settings(), None, "slice")
    assert torch.equal(sliced["layers.1.weight"], server.state_dict()["layers.1.weight"][:6, :12])
    assert torch.equal(sliced["layers.2.weight"], server.state_dict()["layers.2.weight"][:, :6])


def test_averaging_through_the_strategy_equals_flowers_own_fedavg():
    models, sizes = [_mlp(s) for s in range(3)], [50, 150, 300]
    ours, _ = FedFusion(_mlp(9), method="average").aggregate_train(1, [_reply(i + 1, m, n) for i, (m, n) in
                                                                     enumerate(zip(models, sizes))])
    theirs, _ = FedAvg().aggregate_train(1, [_reply(i + 1, m, n) for i, (m, n) in enumerate(zip(models, sizes))])
    for k in theirs:
        np.testing.assert_allclose(ours[k].numpy(), theirs[k].numpy(), rtol=1e-6, atol=1e-7)


def test_a_bad_reply_is_left_out_with_a_reason_and_the_round_goes_on(caplog):
    good = [_mlp(0), _mlp(1)]
    nan = _mlp(2)
    with torch.no_grad():
        nan.layers[0].weight[0, 0] = float("nan")
    replies = [_reply(1, good[0]), _reply(2, good[1]),
               _reply(3, _mlp(3, widths=(24, 7)), declared={"widths": [24, 12], "in_features": 784}),  # wrong shapes
               _reply(4, nan), _reply(5, content=RecordDict({"metrics": MetricRecord({"num-examples": 10})})),
               _reply(6, _mlp(6, widths=(24, 7)))]  # another width: only wasserstein fuses it
    strategy = FedFusion(_mlp(9), method="otfusion")
    with caplog.at_level(logging.WARNING):
        arrays, _ = strategy.aggregate_train(3, replies)
    expected = mf.fuse(good, method="otfusion", cost="weight", weights=[100, 100], progress=False).model
    for k, v in expected.state_dict().items():
        assert torch.equal(_state(arrays)[k], v), k
    why = " | ".join(strategy.left_out[3])
    assert "node 3" in why and "layers.1.weight" in why  # the first differing tensor
    assert "node 4" in why and "NaN" in why
    assert "node 5" in why and "no ArrayRecord 'arrays'" in why
    assert "node 6" in why and "the server's model" in why
    assert len(strategy.left_out[3]) == 4


def test_clients_of_other_widths_are_fused_into_the_servers_width_by_wasserstein():
    models = [_mlp(0, (24, 12)), _mlp(1, (12, 6)), _mlp(2, (12, 6))]
    arrays, _ = FedFusion(_mlp(9, (16, 8)), method="wasserstein").aggregate_train(
        1, [_reply(i + 1, m, 100) for i, m in enumerate(models)])
    expected = mf.fuse(models, method="wasserstein", cost="weight", weights=[100] * 3, widths=[16, 8],
                       progress=False).model
    for k, v in expected.state_dict().items():
        assert torch.equal(_state(arrays)[k], v), k


def test_three_clients_two_rounds_on_flowers_simulation_engine():
    s = Settings(model_kwargs={"widths": [32]}, n_train=900, n_test=500, split="iid")
    history = simulate(s, method="wasserstein", rounds=2, num_clients=3)
    assert sorted(history.accuracy) == [0, 1, 2]
    assert history.accuracy[2] > history.accuracy[0] + 0.1  # the fused global model learns
    assert history.left_out == {}
    for r in (1, 2):  # the round's time split, from Flower's own message timestamps
        sec = history.seconds[r]
        assert all(math.isfinite(sec[k]) and sec[k] >= 0 for k in ("queued", "to client", "to server", "fusion",
                                                                     "clients", "slowest client")), sec
        assert sec["slowest client"] <= sec["clients"] and sec["fusion"] + sec["slowest client"] < sec["round"]
        assert sec["to server"] < sec["round"]


@pytest.mark.slow
def test_fed_fusion_experiment_writes_its_tables_and_figure(tmp_path):
    """`modefuse reproduce fed-fusion --tiny`: seven simulations (about two minutes: Ray starts each time)."""
    from modefuse.experiments import reproduce
    out = tmp_path / "fed"
    reproduce("fed-fusion", "tiny", out=out, progress=False)
    res = json.loads((out / "results.json").read_text())
    assert [t["title"].split(" (")[0] for t in res["tables"]] == ["One-shot federated fusion", "Over rounds",
                                                                 "Clients of two widths", "One round with K clients"]
    assert set(res["results"]["one_shot"]) == {"dirichlet", "labels"}
    assert all(0 < r["ensemble"] <= 1 for r in res["results"]["one_shot"].values())
    assert (out / "accuracy_per_round.png").read_bytes()[:4] == b"\x89PNG"


def test_the_clients_ensemble_averages_their_probabilities():
    """The one-shot table's reference row: the members' softmax outputs averaged (as logs)."""
    from modefuse.experiments.federated import _Ensemble
    models = [torch.nn.Linear(5, 3) for _ in range(3)]
    x = torch.randn(7, 5)
    expected = sum(m(x).softmax(-1) for m in models) / 3
    assert torch.allclose(_Ensemble(models)(x).exp(), expected, atol=1e-6)
    assert torch.allclose(_Ensemble(models[:1])(x).exp(), models[0](x).softmax(-1), atol=1e-6)
