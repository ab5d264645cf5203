"""Hugging Face folders: aligned streamed (neither model loaded whole), fused, and every way it can go wrong."""
import copy
import os

import pytest
import torch
import transformers

import modefuse as mf
from modefuse import hf
from modefuse.storage import lazystate
from modefuse.cli import main
from modefuse.spec.transport import random_perms

from modefuse.match.weight_matching import weight_matching  # noqa: E402


def _gpt2(layers=2, seed=0):
    cfg = transformers.GPT2Config(n_embd=64, n_layer=layers, n_head=4, vocab_size=300, n_positions=64,
                                  bos_token_id=0, eos_token_id=0)
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _planted(model, seed=3):
    """`model` with random permutations planted in its hidden units (the same function)."""
    skel = copy.deepcopy(model)
    skel.config.use_cache = False
    spec = mf.infer_spec(skel, {"input_ids": torch.ones(1, 8, dtype=torch.long)})
    out = copy.deepcopy(model)
    out.load_state_dict(mf.permute(model.state_dict(), spec, random_perms(spec, seed)))
    return out


@pytest.fixture
def gpt2_folders(tmp_path):
    a = _gpt2()
    b = _planted(a)
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b", max_shard_size="100KB")  # sharded, with an index
    (tmp_path / "b" / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    (tmp_path / "b" / "pytorch_model.bin").write_bytes(b"stale pickled weights")  # never copied
    return tmp_path, a, b


def test_streamed_alignment_undoes_a_planted_permutation_and_writes_a_loadable_folder(gpt2_folders):
    tmp, a, b = gpt2_folders
    res = hf.align_folders(tmp / "a", tmp / "b", tmp / "c", tol=0, progress=False)
    assert len(list((tmp / "b").glob("*.safetensors"))) > 1
    names = sorted(p.name for p in (tmp / "c").iterdir())
    assert names == sorted(p.name for p in (tmp / "b").iterdir() if p.name != "pytorch_model.bin")
    c = transformers.GPT2LMHeadModel.from_pretrained(tmp / "c").eval()
    for k, v in a.state_dict().items():  # lm_head is tied to wte: stored once, moved with it
        assert torch.equal(c.state_dict()[k], v), k
    x = torch.randint(0, 300, (2, 10))
    with torch.no_grad():
        assert torch.allclose(c(input_ids=x).logits, b(input_ids=x).logits, atol=1e-5)
    assert res.history and res.spec.groups
    assert not [p for p in tmp.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_streamed_weight_matching_equals_the_in_memory_one(gpt2_folders):
    tmp, _, _ = gpt2_folders
    a, b = _gpt2(seed=1), _gpt2(seed=2)  # two different models: a real matching problem
    a.save_pretrained(tmp / "a2")
    b.save_pretrained(tmp / "b2", max_shard_size="100KB")
    skel = hf.skeleton(tmp / "a2")
    spec = hf.folders._restrict(mf.infer_spec(skel, hf.example_input(skel)[0]), skel, lazystate.LazyState(tmp / "a2"),
                        tmp / "a2")
    lazy, _ = weight_matching(spec, lazystate.LazyState(tmp / "a2"), lazystate.LazyState(tmp / "b2"), tol=0)
    eager, _ = weight_matching(spec, a.state_dict(), b.state_dict(), tol=0)
    assert all(torch.equal(lazy[g], eager[g]) for g in spec.groups)
    assert any((p != torch.arange(len(p))).any() for p in lazy.values())


def test_vision_folder_is_traced_on_pixels(tmp_path):
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                 image_size=16, patch_size=4, num_labels=3)
    torch.manual_seed(0)
    a = transformers.ViTForImageClassification(cfg).eval()
    spec = mf.infer_spec(a, {"pixel_values": torch.zeros(1, 3, 16, 16)})
    b = copy.deepcopy(a)
    b.load_state_dict(mf.permute(a.state_dict(), spec, random_perms(spec, 1)))
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    hf.align_folders(tmp_path / "a", tmp_path / "b", tmp_path / "c", tol=0, progress=False)
    c = transformers.ViTForImageClassification.from_pretrained(tmp_path / "c")
    assert all(torch.equal(c.state_dict()[k], v) for k, v in a.state_dict().items())


def test_folders_of_different_architectures_name_the_first_differing_tensor(tmp_path):
    _gpt2(layers=2).save_pretrained(tmp_path / "a")
    _gpt2(layers=3).save_pretrained(tmp_path / "b")
    with pytest.raises(mf.ArchitectureMismatchError, match="transformer.h.2"):
        hf.align_folders(tmp_path / "a", tmp_path / "b", tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists()


def test_a_truncated_shard_is_named(gpt2_folders):
    tmp, _, _ = gpt2_folders
    shard = sorted((tmp / "b").glob("*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(mf.CheckpointError, match=shard.name):
        hf.align_folders(tmp / "a", tmp / "b", tmp / "c", progress=False)
    assert not (tmp / "c").exists()


@pytest.mark.parametrize("failure", [KeyboardInterrupt, lambda: OSError(28, "No space left on device")])
def test_an_interruption_or_a_full_disk_leaves_nothing_partial_and_a_rerun_works(gpt2_folders, monkeypatch, failure):
    tmp, a, _ = gpt2_folders
    hf.align_folders(tmp / "a", tmp / "b", tmp / "c", progress=False)
    before = {p.name: p.read_bytes() for p in (tmp / "c").iterdir()}
    real, calls = lazystate.write_streamed, []

    def dies_on_the_third_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise failure()
        return real(*args, **kwargs)

    monkeypatch.setattr(hf.folders, "write_streamed", dies_on_the_third_shard)
    expected = KeyboardInterrupt if failure is KeyboardInterrupt else mf.CheckpointError
    with pytest.raises(expected, match=None if failure is KeyboardInterrupt else "No space left.*nothing was left"):
        hf.align_folders(tmp / "a", tmp / "b", tmp / "c", seed=1, progress=False)
    assert {p.name: p.read_bytes() for p in (tmp / "c").iterdir()} == before  # the old result, untouched
    assert not [p for p in tmp.iterdir() if p.name.startswith(".")]
    monkeypatch.setattr(hf.folders, "write_streamed", real)
    hf.align_folders(tmp / "a", tmp / "b", tmp / "d", progress=False)  # a rerun works
    assert transformers.GPT2LMHeadModel.from_pretrained(tmp / "d") is not None


def test_cli_aligns_and_fuses_folders(gpt2_folders, capsys):
    tmp, a, b = gpt2_folders
    assert main(["align", str(tmp / "a"), str(tmp / "b"), "--out", str(tmp / "c"), "--json"]) == 0
    assert '"units_moved"' in capsys.readouterr().out
    c = transformers.GPT2LMHeadModel.from_pretrained(tmp / "c")
    assert all(torch.equal(c.state_dict()[k], v) for k, v in a.state_dict().items())
    assert main(["fuse", str(tmp / "a"), str(tmp / "b"), "--out", str(tmp / "f")]) == 0
    f = transformers.GPT2LMHeadModel.from_pretrained(tmp / "f")
    # the two models are one function in two bases: their fusion is that function again
    x = torch.randint(0, 300, (2, 10))
    with torch.no_grad():
        assert torch.allclose(f(input_ids=x).logits, a(input_ids=x).logits, atol=1e-4)
    assert main(["align", str(tmp / "a"), str(tmp / "b" / "model-00001-of-00007.safetensors"),
                 "--out", str(tmp / "x")]) == 2
    assert "not a Hugging Face model folder" in capsys.readouterr().err
    assert main(["align", str(tmp / "a"), str(tmp / "b"), "--method", "activation", "--out", str(tmp / "x")]) == 2
    assert "streamed" in capsys.readouterr().err
    assert main(["fuse", str(tmp / "a"), str(tmp / "b"), "--repair", "--out", str(tmp / "x")]) == 2
    assert not os.path.exists(tmp / "x")


def test_streamed_writer_round_trips_every_dtype_through_safetensors(tmp_path):
    from safetensors.torch import load_file
    g = torch.Generator().manual_seed(0)
    tensors = {"f32": torch.randn(3, 4, generator=g), "bf16": torch.randn(5, generator=g).bfloat16(),
               "f16": torch.randn(2, 2, 2, generator=g).half(), "i64": torch.arange(7), "b": torch.tensor([True, False]),
               "scalar": torch.tensor(1.5), "empty": torch.zeros(0, 3)}
    keys = list(tensors)
    lazystate.write_streamed(tmp_path / "x.safetensors", keys, {k: tuple(v.shape) for k, v in tensors.items()},
                             {k: v.dtype for k, v in tensors.items()}, tensors.__getitem__, {"format": "pt"})
    back = load_file(tmp_path / "x.safetensors")
    assert set(back) == set(tensors) and all(torch.equal(back[k], v) for k, v in tensors.items())
    lazy = lazystate.LazyState(tmp_path / "x.safetensors")
    assert lazy.shapes["f16"] == (2, 2, 2) and lazy.dtypes["bf16"] == torch.bfloat16 and torch.equal(lazy["i64"], tensors["i64"])
    with pytest.raises(ValueError, match="came back as"):  # a tensor of the wrong shape is refused, nothing written
        lazystate.write_streamed(tmp_path / "y.safetensors", ["f32"], {"f32": (3, 4)}, {"f32": torch.float32},
                                 lambda k: torch.zeros(4, 3))
    assert not (tmp_path / "y.safetensors").exists()


def test_the_spec_is_saved_and_a_saved_or_edited_one_is_used(gpt2_folders, capsys):
    tmp, a, _ = gpt2_folders
    assert main(["align", str(tmp / "a"), str(tmp / "b"), "--out", str(tmp / "c"), "--save-spec",
                 str(tmp / "spec.json")]) == 0
    spec = mf.PermutationSpec.from_json((tmp / "spec.json").read_text())
    assert spec.groups
    assert main(["align", str(tmp / "a"), str(tmp / "b"), "--out", str(tmp / "d"), "--spec", str(tmp / "spec.json")]) == 0
    c, d = (transformers.GPT2LMHeadModel.from_pretrained(tmp / n) for n in "cd")
    assert all(torch.equal(c.state_dict()[k], d.state_dict()[k]) for k in c.state_dict())
    # an edited spec: the MLP hidden units of block 0 left where they are
    g = next(g for g, entries in spec.groups.items() if ("transformer.h.0.mlp.c_fc.bias", 0) in entries)
    edited = mf.PermutationSpec({h: e for h, e in spec.groups.items() if h != g}, spec.layouts,
                                {h: n for h, n in spec.sizes.items() if h != g}, spec.contracted)
    (tmp / "edited.json").write_text(edited.to_json())
    assert main(["align", str(tmp / "a"), str(tmp / "b"), "--out", str(tmp / "e"), "--spec", str(tmp / "edited.json")]) == 0
    e = transformers.GPT2LMHeadModel.from_pretrained(tmp / "e")
    b = transformers.GPT2LMHeadModel.from_pretrained(tmp / "b")
    assert torch.equal(e.state_dict()["transformer.h.0.mlp.c_fc.bias"], b.state_dict()["transformer.h.0.mlp.c_fc.bias"])
    assert main(["align", str(tmp / "a"), str(tmp / "b"), "--out", str(tmp / "f"), "--spec", str(tmp / "nope.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


TEXT = ("the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. " * 40)


def _char_tokenizer(folder):
    """A character-level tokenizer saved in `folder`, built offline with the tokenizers library."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {c: i for i, c in enumerate(sorted(set(TEXT)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=" "))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(folder)


@pytest.fixture
def lm_folders(tmp_path):
    """Two GPT-2s of different seeds, with a tokenizer, and a text file."""
    for name, seed in (("a", 0), ("b", 1)):
        _gpt2(seed=seed).save_pretrained(tmp_path / name)
        _char_tokenizer(tmp_path / name)
    (tmp_path / "text.txt").write_text(TEXT)
    return tmp_path


def _hf_loss(model, data):
    """The model's own mean next-token loss (transformers shifts `labels` itself) over the blocks."""
    x, y = data.tensors
    ids = torch.cat([x, y[:, -1:]], dim=1)
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def test_interpolating_folders_measures_next_token_loss_and_keeps_the_aligned_function(lm_folders):
    from modefuse.hf.textdata import token_blocks
    tmp = lm_folders
    paths = hf.interpolate_folders(tmp / "a", tmp / "b", tmp / "text.txt", steps=3, align=True, block=32,
                                   progress=False)
    data = token_blocks(tmp / "a", tmp / "text.txt", 32)
    assert len(data) == len(TEXT) // 33
    a, b = (hf.load_folder(tmp / n) for n in "ab")
    for p in paths.values():  # the ends are the models' own losses, as transformers computes them
        assert abs(p.loss[0] - _hf_loss(a, data)) < 1e-4
        assert abs(p.loss[-1] - _hf_loss(b, data)) < 1e-4  # aligned B: the same function as B
        assert 0 <= min(p.accuracy) and max(p.accuracy) <= 1
    assert paths["naive"].loss[1] != paths["aligned (weight)"].loss[1]


def test_interpolate_command_on_folders(lm_folders, capsys):
    tmp = lm_folders
    assert main(["interpolate", str(tmp / "a"), str(tmp / "b"), "--text", str(tmp / "text.txt"), "--steps", "3",
                 "--block", "16", "--limit", "4", "--align", "weight", "--plot", str(tmp / "p.png"), "--json"]) == 0
    import json
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out) == {"naive", "aligned (weight)"} and len(out["naive"]["loss"]) == 3
    assert (tmp / "p.png").stat().st_size > 0


@pytest.mark.parametrize("case,message", [
    ("no text", "give --text FILE"),
    ("text for checkpoints", "--text is for Hugging Face folders"),
    ("activation", "aligned by weight matching"),
])
def test_interpolate_folder_usage_errors(lm_folders, capsys, case, message):
    tmp = lm_folders
    argv = {"no text": ["interpolate", str(tmp / "a"), str(tmp / "b")],
            "text for checkpoints": ["interpolate", "x.safetensors", "y.safetensors", "--text", "t.txt"],
            "activation": ["interpolate", str(tmp / "a"), str(tmp / "b"), "--text", str(tmp / "text.txt"),
                           "--align", "activation"]}[case]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_interpolating_folders_without_tokenizer_or_lm_head_says_what_to_do(lm_folders, tmp_path):
    tmp = lm_folders
    _gpt2(seed=2).save_pretrained(tmp / "bare")  # no tokenizer files
    _gpt2(seed=3).save_pretrained(tmp / "bare2")
    with pytest.raises(mf.ModefuseError, match="no tokenizer.*save_pretrained"):
        hf.interpolate_folders(tmp / "bare", tmp / "bare2", tmp / "text.txt", progress=False)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64)
    for n in ("e1", "e2"):
        transformers.BertModel(cfg).save_pretrained(tmp / n)
    with pytest.raises(mf.ModefuseError, match="BertModel, not a causal language model"):
        hf.interpolate_folders(tmp / "e1", tmp / "e2", tmp / "text.txt", progress=False)
    (tmp / "short.txt").write_text("the fox")
    with pytest.raises(mf.ModefuseError, match="fewer than one block"):
        hf.interpolate_folders(tmp / "a", tmp / "b", tmp / "short.txt", progress=False)
