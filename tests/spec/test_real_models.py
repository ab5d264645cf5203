"""Spec inference on models nobody here wrote: Hugging Face transformers built from small configs
(random init, no downloads) and plain torch.nn modules. For each: the spec moves nearly every
parameter, a random permutation of every group keeps the outputs (1e-5 relative), and weight
matching of a permuted copy finds the permutation exactly (the copy comes back bit for bit)."""
import copy

import pytest
import torch
from torch import nn

import modefuse as mf
from modefuse.match.blockmatch import inner_groups
from modefuse.spec.transport import invert, random_perms

T = pytest.importorskip("transformers", reason="transformers is a test dependency: pip install -e '.[test]'")

IDS = torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(0))
IMG = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
SMALL = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


class LSTMWithShapeBranch(nn.Module):
    """fx cannot trace this (control flow on a shape); export resolves the branch."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(28, 16, batch_first=True)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = x.flatten(1, 2) if x.dim() == 4 else x
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])


class Encoder(nn.Module):
    """torch.nn.TransformerEncoder behind an embedding, so that the residual stream can move too."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 32)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2)
        self.head = nn.Linear(32, 3)

    def forward(self, ids):
        return self.head(self.encoder(self.embed(ids)).mean(1))


def _models():
    return {
        # name: (build, example input, outputs to keep, least fraction of parameters moved)
        "bert": (lambda: T.BertForSequenceClassification(T.BertConfig(**SMALL, max_position_embeddings=64,
                                                                      num_labels=3)), (IDS,), None, 0.99),
        "gpt2": (lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4,
                                                        n_positions=64, use_cache=False)), (IDS,), None, 0.99),
        "llama-gqa-rope": (lambda: T.LlamaForCausalLM(T.LlamaConfig(**SMALL, num_key_value_heads=2,
                                                                    max_position_embeddings=64, use_cache=False)),
                           (IDS,), None, 0.99),
        "t5": (lambda: T.T5ForConditionalGeneration(T.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64,
                                                               num_layers=2, num_heads=4, use_cache=False,
                                                               decoder_start_token_id=0)),
               {"input_ids": IDS, "decoder_input_ids": IDS}, [0], 0.99),
        "vit": (lambda: T.ViTForImageClassification(T.ViTConfig(image_size=28, patch_size=7, num_channels=1,
                                                                hidden_size=32, num_hidden_layers=2,
                                                                num_attention_heads=4, intermediate_size=64)),
                (IMG,), None, 0.99),
        "resnet": (lambda: T.ResNetForImageClassification(T.ResNetConfig(num_channels=1, embedding_size=8,
                                                                         hidden_sizes=[8, 16], depths=[1, 1]))
                   .eval(), (IMG,), None, 0.98),
        "convnext-layer-scale": (lambda: T.ConvNextForImageClassification(T.ConvNextConfig(
            num_channels=1, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, layer_scale_init_value=0.5)),
            (IMG,), None, 0.99),
        "mamba": (lambda: T.MambaForCausalLM(T.MambaConfig(vocab_size=100, hidden_size=32, state_size=4,
                                                           num_hidden_layers=2, use_cache=False)), (IDS,), None, 0.99),
        "torch-transformer-encoder": (Encoder, (IDS,), None, 0.99),
        "lstm-shape-branch": (LSTMWithShapeBranch, (IMG,), None, 0.99),
    }


MODELS = _models()


def _out(model, x):
    with torch.no_grad():
        y = model(**x) if isinstance(x, dict) else model(*x)
    return y.logits if hasattr(y, "logits") else y


def _randomize(model):
    """Non-trivial values for norms, biases and layer scales, so that permuting them is really tested."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 or "layer_scale" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


@pytest.mark.parametrize("name", list(MODELS))
def test_real_model_spec_moves_nearly_everything_and_keeps_the_function(name):
    build, x, outputs, least = MODELS[name]
    torch.manual_seed(0)
    model = _randomize(build())
    spec = mf.infer_spec(model, x, outputs=outputs)
    again = mf.PermutationSpec.from_json(spec.to_json())  # the spec as a file: exactly the same data
    assert again == spec and again.unit_nodes == spec.unit_nodes and again.sizes == spec.sizes
    state = model.state_dict()
    floats = {k: v for k, v in state.items() if v.is_floating_point()}
    moved = {k for axes in spec.groups.values() for k, _ in axes}
    fraction = sum(floats[k].numel() for k in moved) / sum(v.numel() for v in floats.values())
    assert fraction >= least, (fraction, sorted(set(floats) - moved)[:8])
    out = _out(model, x)
    permuted = copy.deepcopy(model)
    permuted.load_state_dict(mf.permute(state, spec, random_perms(spec, seed=0)))
    assert any(not torch.equal(state[k], permuted.state_dict()[k]) for k in moved)
    err = (_out(permuted, x) - out).abs().max() / out.abs().max()
    assert err < 1e-5, err
    # weight matching undoes the planted permutation exactly
    res = mf.align(model, permuted, method="weight", example_input=x, spec=spec, max_sweeps=100, tol=0)
    for k, v in res.model.state_dict().items():
        assert torch.equal(v, state[k]), k


@pytest.mark.parametrize("name", list(MODELS))
def test_methods_that_read_data_undo_a_planted_permutation_on_real_models(name):
    """Activation matching (attention heads with the order within them) and covariance-weighted matching
    (grouped and depthwise convolutions too) find the planted permutation of every real model; an
    encoder-decoder reads its keyword inputs from a dict of tensors."""
    build, x, outputs, _ = MODELS[name]
    torch.manual_seed(0)
    model = _randomize(build())
    spec = mf.infer_spec(model, x, outputs=outputs)
    state = model.state_dict()
    permuted = copy.deepcopy(model)
    permuted.load_state_dict(mf.permute(state, spec, random_perms(spec, seed=0)))
    g = torch.Generator().manual_seed(5)
    if isinstance(x, dict):
        data = {k: torch.randint(0, 100, (64, 10), generator=g) for k in x}
    else:
        data = (torch.randint(0, 100, (64, 10), generator=g) if x[0].dtype == torch.long
                else torch.rand(64, *x[0].shape[1:], generator=g))
    for method in ("activation", "weight_cov"):
        res = mf.align(model, permuted, method=method, data=data, example_input=x, spec=spec)
        for k, v in res.model.state_dict().items():
            assert torch.equal(v, state[k]), (method, k)


@pytest.mark.parametrize("name", list(MODELS))
def test_a_model_fused_with_its_permuted_copy_comes_back(name):
    """Fusion of every real model with a shuffled copy of itself gives the model back, and the couplings
    map the target's units onto the copy's own (attention: the copy is first aligned by the heads and the
    order inside them, then coupled group by group)."""
    build, x, outputs, _ = MODELS[name]
    torch.manual_seed(0)
    model = _randomize(build())
    spec = mf.infer_spec(model, x, outputs=outputs)
    planted = random_perms(spec, seed=0)
    permuted = copy.deepcopy(model)
    permuted.load_state_dict(mf.permute(model.state_dict(), spec, planted))
    g = torch.Generator().manual_seed(5)
    data = {k: torch.randint(0, 100, (64, 10), generator=g) for k in x} if isinstance(x, dict) else (
        torch.randint(0, 100, (64, 10), generator=g) if x[0].dtype == torch.long
        else torch.rand(64, *x[0].shape[1:], generator=g))
    out = _out(model, x)
    attention = any(inner_groups(spec, grp) for grp in spec.groups)
    methods = [("wasserstein", "weight"), ("otfusion", "activation"), ("regmean", "activation")]
    if attention:  # ZipIt! merges units one at a time, which heads are not: it says so
        with pytest.raises(mf.ModefuseError, match="zipit does not merge attention heads"):
            mf.fuse([model, permuted], method="zipit", data=data, example_input=x, spec=spec)
    else:
        methods.append(("zipit", "activation"))
    for method, cost in methods:
        fus = mf.fuse([model, permuted], method=method, cost=cost, data=data, example_input=x, spec=spec)
        err = (_out(fus.model, x) - out).abs().max() / out.abs().max()
        assert err < 1e-5, (method, cost, float(err))
        for grp, plans in fus.couplings.items():
            assert torch.equal(plans[1].argmax(1), invert(planted[grp])), (method, cost, grp)


def test_attention_heads_move_as_blocks_with_qk_and_vo_permutations_of_their_own():
    build, x, _, _ = MODELS["vit"]
    spec = mf.infer_spec(build(), x)
    att = "vit.layers.0.attention"
    assert spec.sizes[f"{att}.heads"] == 4 and spec.sizes[f"{att}.qk"] == 8 and spec.sizes[f"{att}.vo"] == 8
    keys = lambda g: {k for k, _ in spec.groups[g]}  # noqa: E731
    assert keys(f"{att}.qk") == {f"{att}.{p}_proj.{t}" for p in "qk" for t in ("weight", "bias")}
    assert keys(f"{att}.vo") == {f"{att}.v_proj.weight", f"{att}.v_proj.bias", f"{att}.o_proj.weight"}
    assert spec.layout(f"{att}.heads", f"{att}.q_proj.weight", 0).block == 8  # a head is a block of 8 rows
    assert spec.layout(f"{att}.qk", f"{att}.q_proj.weight", 0).tiles == 4  # the same order in every head
    # the residual stream is one group through every block, LayerNorms included
    stream = next(g for g, axes in spec.groups.items() if ("vit.layernorm.weight", 0) in axes)
    assert ("vit.layers.1.mlp.fc2.weight", 0) in spec.groups[stream]
    assert ("vit.embeddings.position_embeddings", 2) in spec.groups[stream]


def test_tied_embedding_and_lm_head_are_permuted_as_one_tensor():
    build, x, _, _ = MODELS["gpt2"]
    model = build().eval()
    spec = mf.infer_spec(model, x)
    stream = next(g for g, axes in spec.groups.items() if ("transformer.wte.weight", 1) in axes)
    assert ("lm_head.weight", 1) in spec.groups[stream]
    permuted = mf.permute(model.state_dict(), spec, random_perms(spec, seed=2))
    assert torch.equal(permuted["lm_head.weight"], permuted["transformer.wte.weight"])
