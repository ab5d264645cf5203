"""`modefuse <command>`: a thin layer over the public API; checkpoints in, checkpoints and metrics out."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from .version import __version__
from . import cliargs as T
from .cliargs import UsageError
from .errors import ModefuseError

COMMANDS = {}


def command(name: str, help: str, arguments):
    """Register `fn(args)` as CLI command `name`; `arguments(parser)` adds its options."""
    def deco(fn):
        COMMANDS[name] = (fn, help, arguments)
        return fn
    return deco


# The model options of `train` and the zoo models (by registered name) that take each.
_MODEL_OPTIONS = {"widths": ("mlp",), "width": ("vgg", "resnet"), "depth": ("resnet",), "norm": ("resnet",),
                  "hidden": ("rnn", "lstm"), "batch_norm": ("vgg",)}


def _model_kwargs(args) -> dict:
    """The zoo model's keyword arguments from the options; UsageError for one the model does not take."""
    from .zoo.models import ALIASES, resolve
    base, implied = ALIASES.get(args.model, (args.model, {}))
    kw = {}
    for key, models in _MODEL_OPTIONS.items():
        value = getattr(args, key)
        if value is None or value is False:
            continue
        option = "--" + key.replace("_", "-")
        if base not in models:
            raise UsageError(f"{option} applies to --model {' or '.join(models)}, not {args.model}")
        if key in implied and implied[key] != value:
            raise UsageError(f"{option} {value} contradicts --model {args.model}; use --model {base} {option} {value}")
        kw[key] = value
    kw.update(dict(args.arg or []))
    try:
        resolve(args.model, kw)  # unknown --arg keys, before any data is read
    except ModefuseError as e:
        raise UsageError(str(e)) from None
    return kw


def _add_data_args(p, dataset_default: str | None = "fashion-mnist") -> None:
    p.add_argument("--dataset", type=T.dataset, default=dataset_default,
                   help="fashion-mnist | mnist | cifar10" + ("" if dataset_default else
                                                            " (default: the checkpoint's own)"))
    p.add_argument("--data-dir", default=None, help="directory holding the dataset files")


def _train_args(p):
    p.add_argument("--model", type=T.zoo_model, default="mlp",
                   help="zoo model: mlp | vgg | resnet | resnet20 | resnet18 | rnn | lstm")
    p.add_argument("--widths", type=T.positive_int_list,
                   help="MLP hidden widths, comma separated (default 512,512,512)")
    p.add_argument("--width", type=T.positive_float, help="width multiplier (vgg, resnet)")
    p.add_argument("--depth", type=int, choices=[20, 18], help="resnet depth: 20 or 18")
    p.add_argument("--norm", choices=["none", "batch", "layer"], help="resnet norm: none | batch | layer")
    p.add_argument("--hidden", type=T.positive_int, help="rnn/lstm hidden size")
    p.add_argument("--batch-norm", action="store_true", help="vgg with BatchNorm")
    p.add_argument("--arg", type=T.key_value, action="append", metavar="KEY=VALUE",
                   help="any other model argument (JSON value), e.g. num_layers=2")
    _add_data_args(p)
    _add_recipe_args(p)
    p.add_argument("--out", type=T.output_file, required=True, help="checkpoint to write (.safetensors)")


def _add_recipe_args(p, epochs_help: str = "epochs of training") -> None:
    """The training recipe's options (`mf.Recipe`), the same for every command that trains."""
    from .zoo.recipe import OPTIMIZERS, SCHEDULES
    p.add_argument("--epochs", type=T.nonneg_int, default=5, help=epochs_help)
    p.add_argument("--lr", type=T.positive_float, default=None, help="default: 1e-3 for adam, 0.05 for sgd")
    p.add_argument("--optimizer", default="adam", choices=OPTIMIZERS)
    p.add_argument("--batch-size", type=T.positive_int, default=128)
    p.add_argument("--schedule", default="cosine", choices=SCHEDULES)
    p.add_argument("--seed", type=T.seed, default=0)


def _recipe(args):
    """The `mf.Recipe` of the recipe options."""
    import modefuse as mf
    lr = args.lr if args.lr is not None else (1e-3 if args.optimizer == "adam" else 0.05)
    return mf.Recipe(epochs=args.epochs, lr=lr, optimizer=args.optimizer, batch_size=args.batch_size,
                     schedule=args.schedule, seed=args.seed)


@command("train", "train a zoo model; resumes after an interruption when rerun with the same --out",
         _train_args)
def cmd_train(args) -> int:
    import modefuse as mf
    kwargs = _model_kwargs(args)
    train_ds = mf.data.load(args.dataset, "train", args.data_dir)
    test_ds = mf.data.load(args.dataset, "test", args.data_dir)
    model = mf.models.build_for(args.model, train_ds, seed=args.seed, **kwargs)
    recipe = _recipe(args)
    out = Path(args.out)
    history = mf.train(model, train_ds, recipe, resume=out.with_name(out.name + ".train-state"))
    metrics = mf.evaluate(model, test_ds)
    mf.save(model, out, dataset=args.dataset, seed=args.seed, metrics=metrics, history=history,
            training=recipe.to_dict())
    _report(args, {"checkpoint": str(out), **metrics})
    return 0


def _load_data(args, split: str, model):
    import modefuse as mf
    name = args.dataset or getattr(model, "checkpoint_metadata", {}).get("dataset") or "fashion-mnist"
    return mf.data.load(name, split, args.data_dir)


def _eval_args(p):
    p.add_argument("checkpoint", help="checkpoint to evaluate (.safetensors)")
    _add_data_args(p, dataset_default=None)
    p.add_argument("--split", default="test", choices=["train", "test"])


@command("eval", "evaluate a checkpoint: test loss and accuracy", _eval_args)
def cmd_eval(args) -> int:
    import modefuse as mf
    model = mf.load(args.checkpoint)
    data = _load_data(args, args.split, model)
    metrics = mf.evaluate(model, data)
    _report(args, {"checkpoint": args.checkpoint, "dataset": data.name, "split": args.split, **metrics})
    return 0


def _align_args(p):
    p.add_argument("reference", help="checkpoint of the reference model A (or a Hugging Face model folder)")
    p.add_argument("model", help="checkpoint of the model B to permute toward A (or a Hugging Face model folder)")
    p.add_argument("--method", default="weight", choices=["weight", "activation", "weight_cov"])
    p.add_argument("--seed", type=T.seed, default=0)
    p.add_argument("--out", required=True, help="where to write B permuted toward A (.safetensors; a folder for "
                                                "folders: streamed, neither model is loaded whole)")
    p.add_argument("--spec", metavar="JSON", help="a permutation spec to use instead of the inferred one "
                                                 "(spec.to_json(); edit it, or write one for a model export "
                                                 "cannot trace)")
    p.add_argument("--save-spec", metavar="JSON", help="where to write the spec used, as JSON (default: beside "
                                                      "--out, as NAME.spec.json)")
    _add_data_args(p, dataset_default=None)


@command("align", "permute model B's hidden units toward model A (same function, A's basin)", _align_args)
def cmd_align(args) -> int:
    import modefuse as mf
    from .spec.transport import moved_units
    if _folders(args.reference, args.model):
        if args.method != "weight":
            raise UsageError(f"folders are aligned by weight matching, streamed; --method {args.method} needs the "
                             f"models in memory: load them (from_pretrained) and use mf.align")
        _check_out(args.out, folder=True)
        from . import hf
        res = hf.align_folders(args.reference, args.model, args.out, seed=args.seed, spec=_read_spec(args.spec))
        _write_spec(args, res.spec, args.out)
        _report(args, hf.describe(res))
        return 0
    _check_out(args.out, folder=False)
    a, b = mf.load(args.reference), mf.load(args.model)
    data = _load_data(args, "train", a) if _needs_data(args.method) else None
    res = mf.align(a, b, method=args.method, data=data, seed=args.seed, spec=_read_spec(args.spec))
    meta = {k: v for k, v in b.checkpoint_metadata.items() if k not in ("arch", "format", "modefuse_version")}
    mf.save(res.model, args.out, **meta, aligned_to=args.reference, alignment_method=args.method)
    _write_spec(args, res.spec, args.out)
    _report(args, {"out": args.out, "method": args.method, "groups": len(res.perms),
                   "units_moved": moved_units(res.perms), "sweeps": len(res.history)})
    return 0


def _needs_data(method: str) -> bool:
    """Whether alignment method `method` reads activations (the registry says; the CLI loads the data then)."""
    from .match.methods import get_aligner
    return get_aligner(method).needs_data


def _fuser_reads_data(method: str, cost: str) -> bool:
    """Whether fusion method `method` reads training data: it always does (RegMean, ZipIt!), or it matches
    units first and `cost` is the activation cost (vanilla averaging reads none)."""
    from .merge.methods import get_fuser
    fuser = get_fuser(method)
    return fuser.needs_data or (cost == "activation" and fuser.aligns)


def _folders(*paths) -> bool:
    """Whether the inputs are Hugging Face folders (all of them; a mix is refused)."""
    from .hf.folders import is_folder
    kinds = [is_folder(p) for p in paths]
    if any(kinds) and not all(kinds):
        odd = paths[kinds.index(False)]
        raise UsageError(f"{odd} is not a Hugging Face model folder while the others are; give folders only "
                         f"(config.json + *.safetensors) or checkpoint files only")
    return all(kinds)


def _read_spec(path):
    if path is None:
        return None
    import modefuse as mf
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UsageError(f"--spec {path}: cannot read it ({e.strerror})") from None
    return mf.PermutationSpec.from_json(text)


def _write_spec(args, spec, out) -> None:
    """The spec used, as JSON: at --save-spec, else beside the output (NAME.spec.json), to edit and pass
    back with --spec."""
    if spec is None:
        return
    from .storage.atomic import write_text
    o = Path(out)
    beside = o.with_suffix(".spec.json") if o.suffix == ".safetensors" else o.with_name(o.name + ".spec.json")
    write_text(args.save_spec or beside, spec.to_json() + "\n")


def _check_out(out: str, folder: bool) -> None:
    """--out names a folder to write (for folder inputs) or a checkpoint file (as `T.output_file` checks)."""
    if folder:
        if Path(out).is_file():
            raise UsageError(f"--out {out} is a file; name the folder to write")
        return
    try:
        T.output_file(out)
    except argparse.ArgumentTypeError as e:
        raise UsageError(f"--out: {e}") from None


def _interp_args(p):
    p.add_argument("a", help="checkpoint of model A (alpha = 0), or a Hugging Face folder")
    p.add_argument("b", help="checkpoint of model B (alpha = 1), or a folder")
    p.add_argument("--steps", type=T.int_at_least(2), default=25, help="points on the path, ends included")
    p.add_argument("--align", choices=["weight", "activation", "weight_cov"],
                   help="also align B to A by this method and plot naive and aligned paths together")
    p.add_argument("--plot", type=T.png_file, help="PNG to write: loss and accuracy against alpha")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--text", metavar="FILE", help="Hugging Face folders (causal language models): the text to "
                                                  "measure next-token loss and accuracy on (A's tokenizer)")
    p.add_argument("--block", type=T.positive_int, default=128, help="with --text: tokens per sequence")
    p.add_argument("--limit", type=T.positive_int, help="with --text: at most this many sequences")
    _add_data_args(p, dataset_default=None)


@command("interpolate", "loss and accuracy along the linear path between two models, and the barriers",
         _interp_args)
def cmd_interpolate(args) -> int:
    import modefuse as mf
    if _folders(args.a, args.b):
        if args.text is None:
            raise UsageError("folders are compared by next-token loss on a text: give --text FILE")
        if args.align not in (None, "weight"):
            raise UsageError(f"folders are aligned by weight matching; --align {args.align} needs image data: load "
                             f"the models (from_pretrained) and use mf.align and mf.interpolate")
        from . import hf
        paths = hf.interpolate_folders(args.a, args.b, args.text, steps=args.steps, align=args.align == "weight",
                                       block=args.block, limit=args.limit)
    elif args.text is not None:
        raise UsageError("--text is for Hugging Face folders (causal language models); checkpoints are evaluated "
                         "on image data (--dataset)")
    else:
        a, b = mf.load(args.a), mf.load(args.b)
        data = _load_data(args, args.split, a)
        paths = {"naive": mf.interpolate(a, b, data, steps=args.steps)}
        if args.align:
            train = _load_data(args, "train", a) if _needs_data(args.align) else None
            aligned = mf.align(a, b, method=args.align, data=train).model
            paths[f"aligned ({args.align})"] = mf.interpolate(a, aligned, data, steps=args.steps)
    if args.plot:
        from .landscape.plots import plot_paths
        plot_paths(paths, args.plot, title=f"{Path(args.a).name} (alpha 0) to {Path(args.b).name} (alpha 1)")
    result = {}
    for label, p in paths.items():
        result[f"{label} loss barrier"] = p.loss_barrier
        result[f"{label} accuracy barrier"] = p.accuracy_barrier
    if args.json:
        result = {label: p.to_dict() for label, p in paths.items()}
    _report(args, result)
    return 0


def _fuse_args(p):
    p.add_argument("checkpoints", nargs="+", help="checkpoints of the models to fuse (the first is model 0)")
    p.add_argument("--method", default="auto",
                   choices=["auto", "average", "otfusion", "wasserstein", "gromov", "regmean", "zipit"],
                   help="auto (default): regmean for checkpoints of one width (it reads training images), "
                        "wasserstein with --width, for other widths and for folders")
    p.add_argument("--width", type=T.positive_int_list,
                   help="target width per group, comma separated in the order of the spec's groups "
                        "(e.g. 300,150,75 for an MLP; wasserstein, gromov and zipit); default: model 0's")
    p.add_argument("--weights", type=T.nonneg_float_list,
                   help="model weights lambda_i, one per checkpoint, comma separated (default uniform)")
    p.add_argument("--eps", type=T.positive_float, help="Sinkhorn regularization (relative); default exact OT")
    p.add_argument("--cost", choices=["weight", "activation"],
                   help="compare units by their activations on training images (default), or by their weights "
                        "(the papers' cost, no data; the only one for Hugging Face folders)")
    p.add_argument("--outgoing", action=argparse.BooleanOptionalAction, default=True,
                   help="with --cost weight: compare outgoing weights too (default; --no-outgoing: the papers' cost)")
    p.add_argument("--finetune", type=T.nonneg_int, default=0, metavar="EPOCHS",
                   help="fine-tune the fused model (Adam)")
    p.add_argument("--repair", action="store_true", help="apply REPAIR to the fused model")
    p.add_argument("--plot-couplings", type=T.png_file, metavar="PNG", help="heat maps of the couplings")
    p.add_argument("--out", required=True, help="fused checkpoint to write (.safetensors; a folder for Hugging "
                                                "Face folders)")
    p.add_argument("--spec", metavar="JSON", help="a permutation spec to use instead of the inferred one (as "
                                                 "`modefuse align` writes it; edited or hand-written)")
    p.add_argument("--save-spec", metavar="JSON", help="where to write the fused model's spec (default: beside "
                                                      "--out, as NAME.spec.json)")
    _add_data_args(p, dataset_default=None)


@command("fuse", "fuse K models into one (vanilla averaging, OTFusion, Wasserstein/Gromov-Wasserstein "
                 "barycenter) and compare them", _fuse_args)
def cmd_fuse(args) -> int:
    import modefuse as mf
    widths, weights = args.width, args.weights
    if widths and args.method in ("average", "otfusion", "regmean"):
        raise UsageError(f"--width needs --method wasserstein, gromov or zipit ({args.method} keeps model 0's "
                         f"widths)")
    if weights is not None:
        if len(weights) != len(args.checkpoints):
            raise UsageError(f"--weights has {len(weights)} value(s) for {len(args.checkpoints)} checkpoint(s); "
                             f"give one per checkpoint")
        if sum(weights) <= 0:
            raise UsageError("--weights must have a positive sum")
    if _folders(*args.checkpoints):
        args.method = "wasserstein" if args.method == "auto" else args.method
        if args.finetune or args.repair or _fuser_reads_data(args.method, args.cost) or args.plot_couplings:
            raise UsageError("folders are fused from their weights alone here: --finetune, --repair, --cost "
                             "activation, --method regmean or zipit and --plot-couplings need data the model "
                             "takes; use mf.fuse")
        if args.spec:
            raise UsageError("--spec with folders: load the models (from_pretrained) and use mf.fuse(models, spec=...)")
        _check_out(args.out, folder=True)
        from . import hf
        fus = hf.fuse_folders(args.checkpoints, args.out, method=args.method, weights=weights, widths=widths,
                              eps=args.eps, cost="weight", outgoing=args.outgoing, progress=True)
        _write_spec(args, fus.spec, args.out)
        _report(args, {"out": args.out, "method": args.method, "models": len(args.checkpoints),
                       "groups": len(fus.couplings)})
        return 0
    _check_out(args.out, folder=False)
    args.cost = args.cost or "activation"
    models = [mf.load(c) for c in args.checkpoints]
    if args.method == "auto":
        from .merge.fuse import auto_method
        args.method = auto_method(models, True, widths)
    test = _load_data(args, "test", models[0])
    needs_train = args.finetune or args.repair or _fuser_reads_data(args.method, args.cost)
    train = _load_data(args, "train", models[0]) if needs_train else None
    fus = mf.fuse(models, method=args.method, weights=weights, widths=widths, eps=args.eps, cost=args.cost,
                  outgoing=args.outgoing, data=train, progress=True, spec=_read_spec(args.spec))
    model = fus.model
    rows = {f"input {i} ({Path(c).name})": mf.evaluate(m, test)["accuracy"]
            for i, (m, c) in enumerate(zip(models, args.checkpoints))}
    same = all(m.state_dict()[k].shape == v.shape for m in models for k, v in models[0].state_dict().items())
    if same:
        rows["vanilla averaging"] = mf.evaluate(mf.fuse(models, "average", weights=weights).model, test)["accuracy"]
    rows[f"fused ({args.method})"] = mf.evaluate(model, test)["accuracy"]
    if args.repair:
        model = mf.repair(model, models, train, weights=weights, couplings=fus.couplings)
        rows["fused + REPAIR"] = mf.evaluate(model, test)["accuracy"]
    if args.finetune:
        mf.train(model, train, epochs=args.finetune, lr=1e-4, seed=0)
        rows[f"fused + {args.finetune} epoch(s) fine-tuning"] = mf.evaluate(model, test)["accuracy"]
    meta = {k: v for k, v in models[0].checkpoint_metadata.items() if k in ("dataset",)}
    mf.save(model, args.out, **meta, fused_from=args.checkpoints, fusion_method=args.method,
            metrics={"accuracy": list(rows.values())[-1]})
    _write_spec(args, fus.spec, args.out)
    if args.plot_couplings and fus.couplings:
        from .landscape.plots import plot_couplings
        plot_couplings(fus.couplings, args.plot_couplings)
    if args.json:
        print(json.dumps({"out": args.out, "test_accuracy": rows}))
    else:
        print(f"{'model':>40}  test accuracy")
        for k, v in rows.items():
            print(f"{k:>40}  {100 * v:.2f}%")
        print(f"{'written':>40}  {args.out}")
    return 0


def _plane_args(p):
    p.add_argument("a", help="checkpoint of model 1")
    p.add_argument("b", help="checkpoint of model 2")
    p.add_argument("c", nargs="?", help="third model (default: model 2 aligned to model 1 by --align)")
    p.add_argument("--align", choices=["weight", "activation", "weight_cov"],
                   help="how model 2 is permuted toward model 1 when no third model is given (default weight)")
    p.add_argument("--resolution", type=T.int_at_least(2), default=21, help="grid points per side")
    p.add_argument("--limit", type=T.positive_int, help="evaluate on the first N test examples only")
    p.add_argument("--plot", type=T.png_file, help="PNG to write (filled contours of loss and accuracy)")
    p.add_argument("--out", type=T.output_file, help="JSON file for the grid values")
    _add_data_args(p, dataset_default=None)


@command("plane", "loss and accuracy over the plane through model 1, model 2 and permuted model 2", _plane_args)
def cmd_plane(args) -> int:
    import modefuse as mf
    from .storage.atomic import write_json
    if args.c and args.align:
        raise UsageError("--align permutes model 2 into the third model; with a third checkpoint given, drop --align")
    method = args.align or "weight"
    a, b = mf.load(args.a), mf.load(args.b)
    test = _load_data(args, "test", a)
    if args.c:
        c, labels = mf.load(args.c), ("model 1", "model 2", "model 3")
    else:
        train = _load_data(args, "train", a) if _needs_data(method) else None
        c, labels = mf.align(a, b, method=method, data=train).model, ("model 1", "model 2", "permuted model 2")
    res = mf.plane(a, b, c, test, resolution=args.resolution, labels=labels, limit=args.limit)
    if args.plot:
        res.plot(args.plot, title=f"{Path(args.a).name}, {Path(args.b).name}")
    if args.out:
        write_json(args.out, res.to_dict())
    _report(args, {**{f"{k} accuracy": v for k, v in res.anchor_accuracy.items()},
                   "min grid loss": min(min(r) for r in res.loss)})
    return 0


def _curve_args(p):
    p.add_argument("a", help="checkpoint of endpoint A")
    p.add_argument("b", help="checkpoint of endpoint B")
    p.add_argument("--kind", default="bezier", choices=["bezier", "polychain"])
    p.add_argument("--align", choices=["activation", "weight", "pam"],
                   help="permute B toward A first (pam: then alternate curve and permutation)")
    _add_recipe_args(p, epochs_help="epochs of training (pam: rounds, at least 2, of one epoch each)")
    p.add_argument("--robust", action="store_true", help="train on PGD examples (eps 8/255, 5 steps of 2/255)")
    p.add_argument("--points", type=T.int_at_least(2), default=65, help="points at which the curve is evaluated")
    p.add_argument("--out", type=T.output_file, required=True, help="curve checkpoint (.safetensors)")
    p.add_argument("--plot", type=T.png_file, help="PNG: accuracy along the curve and the linear path")
    _add_data_args(p, dataset_default=None)


@command("curve", "learn a low-loss Bezier or polychain curve between two models", _curve_args)
def cmd_curve(args) -> int:
    import modefuse as mf
    if args.robust and args.align == "pam":
        raise UsageError("--robust is not available with --align pam; use --align activation or weight")
    a, b = mf.load(args.a), mf.load(args.b)
    train, test = _load_data(args, "train", a), _load_data(args, "test", a)
    attack = mf.PGD() if args.robust else None
    if args.align == "pam":
        curve = mf.pam(a, b, train, rounds=max(args.epochs, 2), kind=args.kind,
                       recipe=_recipe(args).replace(epochs=1))
    else:
        curve = mf.fit_curve(a, b, train, kind=args.kind, align=args.align, adversarial=attack,
                             recipe=_recipe(args))
    curve.save(args.out, dataset=a.checkpoint_metadata.get("dataset"), align=args.align)
    ev = curve.evaluate(test, n=args.points, bn_data=train, attack=attack, limit=2000 if attack else None,
                        progress=True)
    linear = mf.interpolate(a, curve.b, test, steps=args.points, bn_data=train)
    if args.plot:
        from .landscape.plots import plot_curve
        plot_curve({f"{args.kind} curve" + (f" ({args.align})" if args.align else ""): ev,
                    "linear path": linear}, args.plot)
    _report(args, {"curve mean accuracy": ev.mean_accuracy, "curve min accuracy": ev.min_accuracy,
                   "linear mean accuracy": sum(linear.accuracy) / len(linear.accuracy),
                   "linear min accuracy": min(linear.accuracy), "out": args.out})
    return 0


def _federate_args(p):
    p.add_argument("--clients", type=T.positive_int, default=10, help="simulated clients (default 10)")
    p.add_argument("--rounds", type=T.positive_int, default=5, help="federated rounds (default 5)")
    p.add_argument("--method", default="wasserstein",
                   choices=["average", "otfusion", "wasserstein", "regmean", "zipit", "heterofl"],
                   help="server aggregation: average (FedAvg), otfusion, wasserstein (default), regmean or zipit "
                        "(both read the clients' models on 1,000 training images on the server; regmean aligns "
                        "them by their activations there), or heterofl "
                        "(averaging the shared slices of clients of smaller widths)")
    p.add_argument("--split", default="dirichlet", choices=["iid", "dirichlet", "labels"],
                   help="how the training set is dealt to the clients (default dirichlet)")
    p.add_argument("--alpha", type=T.positive_float, default=0.5, help="Dirichlet concentration (default 0.5)")
    p.add_argument("--classes", type=T.positive_int, help="--split labels: classes per client (default: disjoint "
                                                         "label sets)")
    p.add_argument("--model", default="mlp", choices=["mlp"], help="zoo model the clients train (mlp)")
    p.add_argument("--widths", type=T.positive_int_list, default=[400, 200, 100],
                   help="hidden widths of the server's model (default 400,200,100)")
    p.add_argument("--client-widths", type=T.positive_int_list, action="append", metavar="WIDTHS",
                   help="widths of the clients, dealt out in turn (repeat: --client-widths 400,200,100 "
                        "--client-widths 200,100,50); needs --method wasserstein")
    p.add_argument("--local-epochs", type=T.positive_int, default=1, help="epochs per round on each client")
    p.add_argument("--lr", type=T.positive_float, default=1e-3, help="clients' learning rate (Adam)")
    p.add_argument("--independent-init", action="store_true",
                   help="round 1: every client starts from its own initialization (one-shot fusion)")
    p.add_argument("--repair", action="store_true", help="REPAIR the fused model on a server-side batch")
    p.add_argument("--seed", type=T.seed, default=0)
    p.add_argument("--n-train", type=T.positive_int, help="use only the first N training images")
    p.add_argument("--data-dir", default=None, help="where the Fashion-MNIST files are (default: search)")


@command("federate", "federated training on Flower's simulation engine (Ray) with a fusing server: FedAvg, "
         "OTFusion or Wasserstein-barycenter aggregation; the global model's test accuracy per round",
         _federate_args)
def cmd_federate(args) -> int:
    if args.classes and args.split != "labels":
        raise UsageError("--classes is the number of classes per client of --split labels")
    if args.client_widths and args.method not in ("wasserstein", "heterofl"):
        raise UsageError("--client-widths needs --method wasserstein or heterofl (the aggregations across widths)")
    if args.method == "heterofl" and any(c > w for ws in args.client_widths or [] for c, w in zip(ws, args.widths)):
        raise UsageError("--method heterofl takes clients no wider than the server (--client-widths <= --widths)")
    if any(len(w) != len(args.widths) for w in args.client_widths or []):
        raise UsageError("every --client-widths must have as many layers as --widths")
    from .zoo.data import load
    load("fashion-mnist", "train", args.data_dir)  # fail now, in one line, when the data is missing
    try:
        from .federated.flower import Settings, simulate
    except ImportError as e:
        raise ModefuseError(str(e)) from None
    s = Settings(model=args.model, model_kwargs={"widths": args.widths},
                 client_kwargs=[{"widths": w} for w in args.client_widths or []], split=args.split,
                 alpha=args.alpha, label_classes=args.classes or 0, seed=args.seed, local_epochs=args.local_epochs,
                 lr=args.lr, independent_init=args.independent_init, n_train=args.n_train, data_dir=args.data_dir)
    cost = "activation" if args.method in ("regmean", "zipit") else "weight"  # they read the server's batch anyway
    history = simulate(s, method=args.method, rounds=args.rounds, num_clients=args.clients, repair=args.repair,
                       cost=cost)
    result = {"accuracy": history.accuracy, "loss": history.loss, "left_out": history.left_out}
    if args.json:
        print(json.dumps(result))
    else:
        for r in sorted(history.accuracy):
            print(f"round {r}: test accuracy {100 * history.accuracy[r]:.1f}%, loss {history.loss[r]:.4f}")
        for r, why in sorted(history.left_out.items()):
            print(f"round {r}: left out {len(why)} repl{'y' if len(why) == 1 else 'ies'}: " + "; ".join(why))
    return 0


def _reproduce_args(p):
    p.add_argument("name", nargs="?", type=T.experiment, help="experiment name (see --list)")
    p.add_argument("--list", action="store_true", help="name each experiment with what it shows")
    preset = p.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="the quick preset: about 10 minutes on 2 CPU cores")
    preset.add_argument("--tiny", action="store_true", help="a smoke-test preset: seconds, meaningless numbers")
    p.add_argument("--data-dir", default=None, help="MNIST or CIFAR-10 files for the full preset")
    p.add_argument("--out", type=T.output_dir, help="output folder (default results/NAME)")


@command("reproduce", "run one of the papers' experiments by name: tables, figures and results.json",
         _reproduce_args)
def cmd_reproduce(args) -> int:
    from .experiments.base import REGISTRY  # the package fills it on import
    from .experiments.runner import reproduce
    if args.list or not args.name:
        for name, exp in REGISTRY.items():
            print(f"{name:10s}  {exp.summary}")
        return 0
    preset = "quick" if args.quick else "tiny" if args.tiny else "full"
    run = reproduce(args.name, preset, out=args.out, data_dir=args.data_dir)
    print(f"{args.name}: wrote {run.out / 'results.json'}, {run.out / 'table.md'} and {len(run.figures)} figure(s)")
    print((run.out / "table.md").read_text())
    return 0


def _report(args, result: dict) -> None:
    """Print `result` as JSON with --json, else as aligned `key: value` lines."""
    if getattr(args, "json", False):
        print(json.dumps(result, default=str))
        return
    for k, v in result.items():
        print(f"{k:>28}: {v:.4f}" if isinstance(v, float) else f"{k:>28}: {v}")


class _Parser(argparse.ArgumentParser):
    """Errors in one line, `modefuse <command>: error: ...` (exit status 2), without argparse's usage block."""

    def error(self, message: str):
        message = re.sub(r"^argument ([^:]+): (must )?", lambda m: m[1] + (" must " if m[2] else ": "), message)
        self.exit(2, f"{self.prog}: error: {message}\n")


# Positional arguments that name input checkpoints, and options that name files the command writes.
_INPUTS = ("checkpoint", "reference", "model", "a", "b", "c", "checkpoints")
_OUTPUTS = ("out", "plot", "plot_couplings", "save_spec")


def _check_paths(args) -> None:
    """No command overwrites one of its inputs, or writes two outputs to one file."""
    inputs = []
    for dest in _INPUTS:
        value = getattr(args, dest, None)
        inputs += value if isinstance(value, list) else [value] if value else []
    outputs = [(dest, getattr(args, dest, None)) for dest in _OUTPUTS if getattr(args, dest, None)]
    for i, (dest, out) in enumerate(outputs):
        option = "--" + dest.replace("_", "-")
        for inp in inputs:
            if T.same_file(out, inp):
                raise UsageError(f"{option} {out} is one of the input checkpoints; write to another file")
        for other_dest, other in outputs[:i]:
            if T.same_file(out, other):
                raise UsageError(f"--{other_dest.replace('_', '-')} and {option} name the same file {out}")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="modefuse", description="Align, fuse and connect trained neural networks.")
    p.add_argument("--version", action="version", version=f"modefuse {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (fn, help, arguments) in COMMANDS.items():
        sp = sub.add_parser(name, help=help, description=help)
        arguments(sp)
        sp.add_argument("--json", action="store_true", help="print machine-readable JSON")
        sp.add_argument("--debug", action="store_true", help="show the full traceback on errors")
        sp.set_defaults(func=fn, parser=sp)
    return p


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """Run `modefuse <command>`: 0 on success, 2 for a usage error, 1 for a failure, each error one line."""
    p = parser()
    try:  # argparse exits (2 after its one-line error, 0 after --help): return that status instead
        args, extra = p.parse_known_args(argv)
        if extra and getattr(args, "func", None):
            args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    if not getattr(args, "func", None):
        p.print_help()
        return 2
    prog = f"modefuse {args.command}"
    try:
        _check_paths(args)
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except UsageError as e:
        if args.debug:
            raise
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except (ModefuseError, OSError) as e:
        if args.debug:
            raise
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug or an unforeseen input: still one line, the traceback with --debug
        if args.debug:
            raise
        print(f"{prog}: error: {type(e).__name__}: {_one_line(e)} (unexpected; rerun with --debug for the "
              f"traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
