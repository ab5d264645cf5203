import dataclasses

import pytest
import torch
from torch import nn

import modefuse as mf
from modefuse.spec.transport import random_perms
from zoo_instances import INPUTS, ZOO, build, randomize_norm_stats


def assert_permutation_invariant(model, x, seed=0):
    model = randomize_norm_stats(model).eval()
    spec = mf.infer_spec(model, x[:2])
    assert spec.groups, "no hidden units found"
    again = mf.PermutationSpec.from_json(spec.to_json())
    assert again == spec and again.unit_nodes == spec.unit_nodes and again.sizes == spec.sizes
    perms = random_perms(spec, seed)
    assert all((p != torch.arange(len(p))).any() for p in perms.values() if len(p) > 2)
    state = model.state_dict()
    permuted = mf.permute(state, spec, perms)
    assert any(not torch.equal(state[k], permuted[k]) for k in state)
    out = model(x)
    model.load_state_dict(permuted)
    assert torch.allclose(model(x), out, atol=1e-5), (model(x) - out).abs().max()
    return spec


@pytest.mark.parametrize("input_kind", list(INPUTS))
@pytest.mark.parametrize("key", list(ZOO))
def test_random_permutation_keeps_zoo_outputs(key, input_kind):
    assert_permutation_invariant(build(key, input_kind), torch.rand(8, *INPUTS[input_kind]))


def test_mlp_spec_is_the_expected_plain_data():
    spec = mf.infer_spec(mf.models.build("mlp", widths=[5, 4]), torch.rand(2, 1, 28, 28))
    assert spec.groups == {
        "layers.0": (("layers.0.weight", 0), ("layers.0.bias", 0), ("layers.1.weight", 1)),
        "layers.1": (("layers.1.weight", 0), ("layers.1.bias", 0), ("layers.2.weight", 1)),
    }
    assert spec.sizes == {"layers.0": 5, "layers.1": 4}


class LNBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)

    def forward(self, x):
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))


class Custom(nn.Module):
    """Convolutions -> flatten -> Linear, residual LayerNorm blocks, a concatenation, a GRU and an embedding."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.gn = nn.GroupNorm(1, 6)
        self.conv2 = nn.Conv2d(6, 4, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.proj = nn.Linear(4 * 7 * 7, 12)        # a channel moves a block of 49 input features
        self.blocks = nn.Sequential(LNBlock(12), LNBlock(12))
        self.side = nn.Linear(4 * 7 * 7, 5)
        self.emb = nn.Embedding(10, 3)
        self.gru = nn.GRU(20, 7, batch_first=True)
        self.lstm = nn.LSTM(7, 6, num_layers=2, batch_first=True)
        self.head = nn.Linear(12 + 6, 10)

    def forward(self, x):
        h = torch.relu(self.gn(self.conv1(x)))
        h = torch.nn.functional.max_pool2d(torch.relu(self.conv2(h)), 2, 1, padding=0)
        h = nn.functional.pad(h, (0, 1, 0, 1))
        h = self.dw(h)
        flat = h.flatten(1)
        z = self.blocks(self.proj(flat))
        s = torch.tanh(self.side(flat))
        tokens = (x[:, 0, :4, 0] * 9).long()
        seq = torch.cat([self.emb(tokens), s.unsqueeze(1).expand(-1, 4, -1),
                         torch.sigmoid(z).view(-1, 1, 12).expand(-1, 4, -1)], dim=2)
        g, _ = self.gru(seq)
        out, (hn, cn) = self.lstm(torch.relu(g))
        return self.head(torch.cat([z, hn[-1] + out[:, -1]], dim=1))


def test_custom_model_with_layernorm_residuals_flatten_concat_and_recurrence():
    torch.manual_seed(0)
    model = Custom()
    spec = assert_permutation_invariant(model, torch.rand(8, 1, 14, 14))
    # the residual stream through both LayerNorm blocks is one group, moving the proj rows and head columns
    stream = spec.groups["proj"]
    for key in ("proj.weight", "blocks.0.norm.weight", "blocks.1.fc2.bias", "blocks.1.fc1.weight", "head.weight"):
        assert any(k == key for k, _ in stream), key
    assert spec.layout("conv2", "proj.weight", 1).block == 49
    assert spec.layout("gru", "gru.weight_ih_l0", 0).tiles == 3
    assert spec.layout("lstm.l1", "head.weight", 1).offset == 12


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # control flow on a tensor value: fx cannot trace it
            return self.fc(x)
        return x


class UnknownOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(torch.cumsum(self.fc1(x), dim=1))


@torch.library.custom_op("modefuse_test::gate", mutates_args=())
def gate(x: torch.Tensor) -> torch.Tensor:
    """A user's own op (element-wise): export keeps it as one node that no built-in rule knows."""
    return x * torch.sigmoid(x)


@gate.register_fake
def _(x):
    return torch.empty_like(x)


class CustomOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.fc2(gate(self.fc1(x)))


def test_untraceable_and_unknown_ops_name_the_node_and_the_fix():
    with pytest.raises(mf.SpecInferenceError, match="cannot trace Untraceable.*register_rule.*PermutationSpec"):
        mf.infer_spec(Untraceable(), torch.rand(2, 4))
    with pytest.raises(mf.SpecInferenceError, match="node 'gate'.*modefuse_test.gate.*register_rule.*PermutationSpec"):
        mf.infer_spec(CustomOp(), torch.rand(2, 4))
    spec = mf.infer_spec(CustomOp(), torch.rand(2, 4), unknown="fix")  # leave its units where they are
    assert spec.groups == {}


def test_register_rule_teaches_inference_a_users_own_op():
    mf.register_rule(torch.ops.modefuse_test.gate)(mf.rules.pointwise)
    try:
        spec = assert_permutation_invariant(CustomOp(), torch.rand(8, 4))
        assert spec.groups == {"fc1": (("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 1))}
    finally:
        mf.rules.RULES.pop(torch.ops.modefuse_test.gate)


def test_an_op_that_does_not_commute_with_permutations_pins_its_units_and_says_so():
    model = UnknownOp()  # cumsum over the hidden units: their order matters
    with pytest.warns(UserWarning, match="stay fixed.*node 'cumsum'.*cumsum"):
        spec = mf.infer_spec(model, torch.rand(2, 4))
    assert spec.groups == {}  # fc1's units are pinned, fc2's are the output


def test_hand_written_spec_as_plain_data():
    model = UnknownOp()
    written = mf.PermutationSpec(groups={"h": [("fc1.weight", 0), ("fc1.bias", 0)]})  # cumsum: only rows move
    spec = written.check(model.state_dict())
    assert spec.sizes == {"h": 4}
    assert written.sizes == {}  # frozen data: checking returns a new spec, the one written stays as it was
    with pytest.raises(dataclasses.FrozenInstanceError):
        written.sizes = {"h": 4}
    with pytest.raises(mf.ModefuseError, match="'nope.weight'"):
        mf.PermutationSpec(groups={"h": [("nope.weight", 0)]}).check(model.state_dict())
    with pytest.raises(mf.ModefuseError, match="does not fit"):
        mf.PermutationSpec(groups={"h": [("fc1.weight", 0), ("fc2.weight", 0)]}).check(model.state_dict())


def test_from_axes_builds_the_inferred_spec_and_align_leaves_a_given_spec_as_it_was():
    model = mf.models.build("mlp", widths=[6, 5])
    inferred = mf.infer_spec(model, torch.rand(2, 1, 28, 28))
    written = mf.PermutationSpec.from_axes({  # Git Re-Basin's axes_to_perm: a group name (or None) per axis
        "layers.0.weight": ("layers.0", None), "layers.0.bias": ("layers.0",),
        "layers.1.weight": ("layers.1", "layers.0"), "layers.1.bias": ("layers.1",),
        "layers.2.weight": (None, "layers.1")})
    checked = written.check(model.state_dict())
    assert (checked.groups, checked.layouts, checked.sizes) == (inferred.groups, inferred.layouts, inferred.sizes)
    before = written.to_json()
    other = mf.models.build("mlp", widths=[6, 5], seed=1)
    res = mf.align(model, other, spec=written)
    assert written.to_json() == before and written.sizes == {}  # not filled in, no trace written onto it
    assert res.spec.sizes == inferred.sizes
    from modefuse.spec.trace import trace_of
    assert trace_of(inferred) is not None and trace_of(written) is None  # the graph is kept apart from the data
    assert inferred.axes_of is inferred.axes_of  # the inverse map is computed once
