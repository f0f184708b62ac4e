"""`python -m search run SPEC`, `soup RUN_DIR`, `lr-find SPEC`, `evaluate RUN_DIR`, `predict
RUN_DIR --input ... --output DIR`, `repeat`, `crossval` and `compare RUN_DIR --baseline B`:
thin wrappers over the importable API (`search.api`, `search.evaluate`, `search.predict`,
...). A user error is one line on stderr and exit code 2 (`--debug` shows the traceback)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from contextlib import nullcontext
from pathlib import Path

from search import stopping
from search.errors import ArgumentError, SegtuneError
from search.lazy import LazyModule
from search.runfolder import MODELS, RunFolder
from search.runlock import run_lock
from search.spec import SearchLeaf, load_spec
from search.stopping import Interrupted
from search.summary import Summary
from search.trials import values_text
from train_fn.datasets import io_shape
from train_fn.models import build_model
from train_fn.optim import param_groups

# Each command's implementation, imported when the command runs: `--help` and a spec error
# answer without importing Ray, MLflow, Optuna or torch (see search.lazy).
api = LazyModule("search.api")
compare = LazyModule("search.compare")
evaluate = LazyModule("search.evaluate")
lrfind = LazyModule("search.lrfind")
predict = LazyModule("search.predict")
prepare = LazyModule("search.prepare")
report = LazyModule("search.report")
retrain = LazyModule("search.retrain")
space = LazyModule("search.space")
storage = LazyModule("search.storage")
tracking = LazyModule("search.tracking")


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake as one line (as every user error) and exit code 2."""

    def error(self, message: str):
        print(f"segtune: error: {message} (see: {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _count(low: int, high: int):
    """An argparse type: an integer from `low` to `high`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            shown = text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"
            raise argparse.ArgumentTypeError(f"{shown!r}: an integer from {low} to {high}")
        return value
    return parse


def _address(text: str) -> str:
    """An argparse type: auto, local, or [ray://]HOST:PORT with a port from 1 to 65535."""
    host, _, port = text.removeprefix("ray://").rpartition(":")
    if text in ("auto", "local") or (host and port.isdigit() and 1 <= int(port) <= 65535
                                     and host.isprintable() and " " not in host):
        return text
    shown = text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"
    raise argparse.ArgumentTypeError(f"{shown!r}: auto, local, or HOST:PORT of a Ray head "
                                     "(port 1 to 65535), e.g. 10.0.0.5:6379")


def _region(text: str) -> tuple[int, ...]:
    """An argparse type: a region, comma-separated label ids from 1 to 255, e.g. 1,2,3."""
    try:
        ids = tuple(int(t) for t in text.split(","))
    except ValueError:
        ids = ()
    if not ids or not all(1 <= i <= 255 for i in ids) or len(set(ids)) < len(ids):
        shown = text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"
        raise argparse.ArgumentTypeError(f"{shown!r}: comma-separated label ids from 1 to "
                                         "255, each once, e.g. 1,2,3")
    return ids


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m search", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the search of a spec")
    run.add_argument("spec", help="the YAML spec, e.g. spaces/novograd.yaml")
    run.add_argument("--set", dest="overrides", action="append", default=[],
                     metavar="KEY=VALUE", help="override a spec key, e.g. train.epochs=4")
    run.add_argument("--name", help="run name (default: the spec file's stem)")
    run.add_argument("--storage", help="folder holding runs (default: runs/), or an object "
                     "store for the checkpoints, e.g. s3://bucket/prefix (credentials from "
                     "the environment)")
    run.add_argument("--local-dir", help="with an object-store --storage: the local folder "
                     "for the run folder and the default MLflow store (default: runs/)")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite at "
                     "<storage>/mlflow.db, or the spec's tracking.uri)")
    run.add_argument("--address", type=_address, help="run on an existing Ray cluster: auto, "
                     "or HOST:PORT of its head (default: RAY_ADDRESS, else a local Ray on "
                     "this machine)")
    run.add_argument("--resume", action="store_true",
                     help="continue the interrupted run of this name (same spec)")
    run.add_argument("--warm-start", nargs="+", default=[], metavar="RUN_DIR",
                     help="earlier runs on the same data, model and metric whose trials seed "
                     "this search's sampler (values outside the new ranges are skipped)")
    run.add_argument("--warm-start-best", type=_count(0, 1000), default=0, metavar="K",
                     help="with --warm-start: try the K best earlier configurations first")
    run.add_argument("--dry-run", action="store_true",
                     help="validate, print the settings and the search space; start nothing")

    find = sub.add_parser("lr-find", help="run an LR range test for a spec")
    find.add_argument("spec", help="the YAML spec")
    find.add_argument("--set", dest="overrides", action="append", default=[],
                      metavar="KEY=VALUE", help="override a spec key, e.g. lr_finder.end_lr=3")
    find.add_argument("--out", help="folder for lr_finder_plot.png and lr_finder.json "
                      "(default: runs/<spec stem>-lr-find)")

    soup = sub.add_parser("soup", help="soup the best checkpoints of a finished run")
    soup.add_argument("run_dir", help="the run folder, e.g. runs/novograd")
    soup.add_argument("--top-k", type=_count(1, 1000), help="how many of the best trials to soup "
                      "(default: the spec's soup.top_k)")

    ev = sub.add_parser("evaluate", help="predict a split of a finished run as NIfTI files and "
                        "score them (nnU-Net-style summary.json)")
    ev.add_argument("run_dir", help="the run folder, e.g. runs/novograd")
    ev.add_argument("--model", default="best", help="best, greedy, uniform, or a checkpoint "
                    "file or folder (default: best)")
    ev.add_argument("--split", default="test", help="test, val or train (default: test)")
    ev.add_argument("--out", help="output folder (default: RUN_DIR/eval/<model>-<split>)")

    ef = sub.add_parser("evaluate-folder", help="score any folder of predictions against a "
                        "folder of references, paired by file name (nnUNetv2_evaluate_folder)")
    ef.add_argument("ref_dir", help="the reference label maps (*.nii.gz)")
    ef.add_argument("pred_dir", help="the predictions, named as their references")
    ef.add_argument("-l", "--labels", type=_count(1, 255), nargs="+", help="label ids to "
                    "score (default, without -r: every non-zero id in the references)")
    ef.add_argument("-r", "--regions", type=_region, nargs="+", metavar="IDS", help="regions "
                    "to score, each comma-separated label ids scored as one, e.g. 1,2,3 2,3 "
                    "(keyed as nnU-Net's, \"(1, 2, 3)\")")
    ef.add_argument("-il", "--ignore-label", type=_count(1, 255), metavar="ID", help="a "
                    "reference label whose voxels count nowhere (nnU-Net's ignore label)")
    ef.add_argument("--chill", action="store_true", help="score the predicted cases only "
                    "where some references have no prediction (nnU-Net's --chill)")
    ef.add_argument("-o", "--out", help="summary.json to write (default: PRED_DIR/summary.json)")
    ef.add_argument("--hd95", action="store_true", help="also HD95 in mm (MONAI's)")

    pr = sub.add_parser("predict", help="segment new images (no labels needed) with a "
                        "finished run's model: one <name>.nii.gz per input, in its own grid")
    pr.add_argument("run_dir", help="the run folder, e.g. runs/novograd")
    pr.add_argument("--input", "-i", nargs="+", required=True, metavar="DIR_OR_FILE",
                    help="a folder (every *.nii / *.nii.gz in it) or one or more NIfTI files")
    pr.add_argument("--output", "-o", required=True, metavar="DIR",
                    help="folder for the predictions, <name>.nii.gz per input")
    pr.add_argument("--model", default="best", help="best, greedy, uniform, or a checkpoint "
                    "file or folder (default: best)")
    pr.add_argument("--device", choices=["auto", "cpu", "cuda"],
                    help="where to run the network (default: the spec's train.device)")
    pr.add_argument("--tta", action="store_true", help="test-time mirroring: average the "
                    "prediction over the 8 flips of the 3 axes (8x the time)")
    pr.add_argument("--save-probabilities", action="store_true", help="also write the class "
                    "probabilities, <name>.npz (key probabilities, classes x X x Y x Z)")
    pr.add_argument("--overlap", type=float, help="sliding-window overlap, 0 to <1 (default: "
                    "the spec's train.sw_overlap)")
    pr.add_argument("--continue", dest="skip_existing", action="store_true",
                    help="skip inputs whose output exists (continue an interrupted folder)")

    rep = sub.add_parser("repeat", help="retrain the best (or a named) configuration with "
                         "several seeds; per-region mean and std")
    rep.add_argument("run_dir", help="the run folder")
    rep.add_argument("--seeds", required=True, help="comma-separated, e.g. 42,43,44")
    rep.add_argument("--trial", help="a trial id of the run (default: the best)")

    cv = sub.add_parser("crossval", help="retrain the best configuration(s) on k folds; "
                        "per-region mean and std over folds, soups per fold")
    cv.add_argument("run_dir", help="the run folder")
    cv.add_argument("--folds", type=_count(2, 100), help="number of folds (default: the "
                    "spec's cv.folds, else 5)")
    cv.add_argument("--top-k", type=_count(1, 100), default=None, help="configurations to "
                    "retrain and soup per fold (default: the spec's cv.top_k)")
    cv.add_argument("--trial", help="one named trial instead of the best")

    comp = sub.add_parser("compare", help="per-class Dice (and HD95) of a run against a baseline")
    comp.add_argument("run_dir", help="the run folder, e.g. runs/novograd")
    comp.add_argument("--baseline", required=True, help="another run folder, an nnU-Net "
                      "summary.json, a CSV with the header class,mean[,std][,metric], or a "
                      "checkpoint file or folder scored by evaluate in this run")
    comp.add_argument("--model", default="best", help="the run's model to compare: best, "
                      "greedy, uniform, or a checkpoint file or folder scored by evaluate "
                      "(default: best)")
    comp.add_argument("--split", default="test", help="the split evaluated (default: test)")
    comp.add_argument("--baseline-model", choices=MODELS,
                      help="the model of a baseline run folder (default: --model)")
    for command in (soup, rep, cv, comp):
        command.add_argument("--tracking-uri", help="log this folder's results to a new parent "
                             "run in this MLflow store from now on (for a copied or moved run "
                             "folder, which may not write into the original's)")
    return parser


def _rehome(args) -> None:
    folder = RunFolder(args.run_dir)
    if args.tracking_uri and folder.is_run():
        folder.rehome(args.tracking_uri)


def _out_folder(path: str | None, option: str) -> None:
    """Refuse an output folder that is a file (or below one) before any work is done."""
    if path is None:
        return
    for part in (Path(path), *Path(path).parents):
        if part.exists():
            if not part.is_dir():
                raise ArgumentError(f"{option} {path}: {part} is a file, not a folder; give "
                                    "a folder (made if missing)")
            return


def _evaluate(args) -> int:
    _out_folder(args.out, "--out")
    with _held(args.run_dir, read_only=args.out is not None):
        evaluation = evaluate.evaluate_run(args.run_dir, args.model, args.split, args.out)
    print(evaluate.format_scores(evaluation))
    print(f"predictions and summary.json: {evaluation.out_dir}")
    return 0


def _evaluate_folder(args) -> int:
    if args.out and Path(args.out).is_dir():
        raise ArgumentError(f"-o {args.out}: a folder; give the summary.json file to write")
    evaluation = evaluate.evaluate_folder(args.ref_dir, args.pred_dir, args.labels, args.out,
                                          args.hd95, args.regions, args.ignore_label,
                                          args.chill)
    print(evaluate.format_scores(evaluation))
    print(f"summary.json: {args.out or Path(args.pred_dir) / 'summary.json'}")
    return 0


def _predict(args) -> int:
    with _held(args.run_dir, read_only=True):
        written = predict.predict_files(args.run_dir, args.input, args.output, args.model,
                                        args.device, args.tta, args.save_probabilities,
                                        args.overlap, args.skip_existing)
    for path in written:
        print(path)
    print(f"{len(written)} prediction(s) in {args.output}", file=sys.stderr)
    return 0


def _repeat(args) -> int:
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ArgumentError(f"--seeds {args.seeds}: comma-separated integers, e.g. 42,43,44") \
            from None
    with _held(args.run_dir):
        _rehome(args)
        results = retrain.repeat(args.run_dir, seeds, args.trial)
    print(results["table"])
    print(f"results.md, results.json: {results['files']}", file=sys.stderr)
    return 0


def _at_home(run_dir) -> None:
    """Refuse a copied or moved run folder (without --tracking-uri) before anything is
    written into it: its MLflow run belongs to the original (see search.tracking)."""
    folder = RunFolder(run_dir)
    if folder.is_run() and folder.info.home and folder.info.tracking_uri \
            and Path(folder.info.home) != folder.path.resolve():
        raise tracking._home_error(folder.path, folder.info.to_json())


def _crossval(args) -> int:
    with _held(args.run_dir):
        _rehome(args)
        _at_home(args.run_dir)
        spec = RunFolder(args.run_dir).spec
        folds = args.folds or spec.cv.folds or 5
        top_k = args.top_k or spec.cv.top_k
        print(retrain.crossval(args.run_dir, folds, top_k, args.trial)["table"])
    return 0


def _held(run_dir, read_only: bool = False):
    """The run folder held by this command (see search.runlock); a path that is no folder
    gets the command's own error, and no lock file. A command that only reads the run
    (`read_only`) may use a read-only one without a lock."""
    return run_lock(run_dir, read_only) if Path(run_dir).is_dir() else nullcontext()


def _dry_run(spec, args) -> None:
    name, local, run_dir = api.run_paths(args.spec, args.name, args.storage, args.local_dir)
    storage.check_local_folder(local, "--local-dir" if storage.is_uri(args.storage)
                               else "--storage")
    uri, experiment = api.tracking_target(spec, local, name, args.tracking_uri)
    searched = spec.searched()
    print(f"spec {args.spec}: valid")
    print(f"run folder: {run_dir}" + (
        "  (left by a run stopped before its first trial: it starts afresh)"
        if api._unstarted(run_dir) else "  (exists: the run would be refused)"
        if run_dir.exists() else ""))
    if storage.is_uri(args.storage):
        print(f"checkpoints: {storage.join(args.storage, name)}")
    print(f"MLflow: {uri}  experiment {experiment!r}")
    print("\nfixed settings:")
    for key, value in spec.flat().items():
        if key not in searched:
            print(f"  {key}: {value}")
    print(f"\nsearch space ({len(searched)} parameters, {spec.search.sampler} sampler, "
          f"seed {spec.search.seed}):")
    for line in space.describe(spec):
        print(f"  {line}")
    print("\nlearning-rate groups (lr x multiplier):")
    for line in _groups(spec):
        print(f"  {line}")
    if searched:
        print("\nfirst configurations the sampler proposes:")
        for config in space.preview(spec, min(3, spec.search.num_trials)):
            print("  " + values_text(config, digits=4))


def _groups(spec) -> list[str]:
    """One line per LR group: its multiplier (or search range) and what it holds."""
    model = build_model(spec.model, *io_shape(spec.data))
    total = sum(p.numel() for p in model.parameters())
    # Searched multipliers are shown by their range; the groups come from a copy with 1.0.
    layers = spec.layers.model_copy(update={
        k: 1.0 for k, v in spec.layers if isinstance(v, SearchLeaf)})
    lines = []
    for group in param_groups(model, spec.model, layers, 1.0):
        band = group["name"].split("/")[0]
        value = getattr(spec.layers, band, None) if spec.layers.mode == "bands" else None
        if isinstance(value, SearchLeaf):
            mult = tracking.readable_range(value)
        elif any(isinstance(v, SearchLeaf) for _, v in spec.layers):
            mult = "searched" if spec.layers.mode != "bands" else f"{group['multiplier']:.3g}x"
        else:
            mult = f"{group['multiplier']:.3g}x"
        count = sum(p.numel() for p in group["params"])
        lines.append(f"{group['name']:<22} {mult:<18} {len(group['params']):3d} tensors "
                     f"{count:9,d} parameters ({100 * count / total:.1f}%)")
    return lines


def _run(args) -> int:
    spec = load_spec(args.spec, args.overrides)
    if args.dry_run:
        _dry_run(spec, args)
        return 0
    summary = api.run_search(spec, args.spec, name=args.name, storage=args.storage,
                         tracking_uri=args.tracking_uri, resume=args.resume,
                         ray_init={"address": args.address} if args.address else None,
                         local_dir=args.local_dir, overrides=args.overrides,
                         warm_start=args.warm_start, warm_start_best=args.warm_start_best)
    _, local, _ = api.run_paths(args.spec, args.name, args.storage, args.local_dir)
    _print_end(summary, list(spec.searched()), args.tracking_uri or spec.tracking.uri, local)
    return 0


def _lr_find(args) -> int:
    spec = load_spec(args.spec, args.overrides)
    _out_folder(args.out, "--out")
    out = Path(args.out or Path("runs") / f"{Path(args.spec).stem}-lr-find")
    data_root, split = prepare.prepare_data(spec)
    _, result = lrfind.lr_find(spec, data_root, split, out)
    print(f"suggested lr: {result['suggestion']:.4g}  ({spec.optimizer.name}, steepest descent "
          f"of the smoothed loss over {len(result['lr'])} steps from {result['start_lr']:g})")
    if result["warning"]:
        print(f"warning: {result['warning']}")
    used = result["lr_used"]
    print("with lr_finder.use=" + spec.lr_finder.use + ": optimizer.lr = " + (
        f"{used:.4g}" if isinstance(used, float) else
        f"{{type: float, low: {used['low']:.3g}, high: {used['high']:.3g}, log: true}}"))
    print(f"plot: {result['plot']}")
    return 0


def _soup(args) -> int:
    with _held(args.run_dir):
        _rehome(args)
        summary = api.soup_run(args.run_dir, args.top_k)
    searched = list(RunFolder(args.run_dir).spec.searched())
    print(report.format_summary(summary, searched))
    return 0


def _compare(args) -> int:
    with _held(args.run_dir):
        _rehome(args)
        _at_home(args.run_dir)
        result = compare.compare_run(args.run_dir, args.baseline, args.model, args.split,
                             args.baseline_model)
    print(result.markdown, end="")
    where = f"; MLflow run {result.mlflow_run_id}" if result.mlflow_run_id else ""
    print(f"written: {result.out_dir}/compare.md, compare.csv{where}", file=sys.stderr)
    return 0


def _print_end(summary: Summary, searched: list[str], uri: str | None, local: Path) -> None:
    print(report.format_summary(summary, searched))
    info = RunFolder(summary.run_dir).info
    uri = info.tracking_uri or uri or f"sqlite:///{(Path(local) / 'mlflow.db').resolve()}"
    view = tracking.experiment_view_url(uri, info.experiment) if info.experiment else None
    print("\n" + "\n".join(report.next_steps(summary, summary.run_dir, uri, view)))


MAX_MESSAGE = 2000  # characters of an error line: a 200 KB value is shown by its ends


def _short(text: str) -> str:
    if len(text) <= MAX_MESSAGE:
        return text
    return (f"{text[:MAX_MESSAGE - 300]} ... ({len(text) - MAX_MESSAGE + 100:,} characters "
            f"left out) ... {text[-200:]}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S",
    )
    for noisy in ("alembic", "mlflow", "ray", "optuna", "urllib3", "filelock", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Ray Tune's own "Resume experiment with: Tuner.restore(...)": segtune prints the command;
    # its "Trials did not complete": segtune names each failed trial and its error.
    logging.getLogger("ray.tune.tune").addFilter(
        lambda record: "Resume experiment with" not in record.getMessage()
        and not record.getMessage().startswith("Trials did not complete"))
    # It logs each failed query with its traceback, then raises it: segtune reports that once.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    stopping.local_ray_on_loopback(getattr(args, "address", None))
    stopping.install()
    try:
        commands = {"run": _run, "soup": _soup, "lr-find": _lr_find, "evaluate": _evaluate,
                    "predict": _predict, "repeat": _repeat, "crossval": _crossval,
                    "evaluate-folder": _evaluate_folder,
                    "compare": _compare}
        return commands[args.command](args)
    except SegtuneError as err:
        if args.debug:
            raise
        print(f"segtune: error: {_short(str(err))}", file=sys.stderr)
        return 2
    except Interrupted as err:
        print(f"segtune: {err}", file=sys.stderr)
        return stopping.exit_code()
    except KeyboardInterrupt:
        print("segtune: interrupted", file=sys.stderr)
        return stopping.exit_code()
    except Exception as err:  # one line for users, the traceback with --debug
        if args.debug or os.environ.get("SEGTUNE_DEBUG"):
            raise
        print(f"segtune: error: {type(err).__name__}: {err} (rerun with --debug for the "
              "traceback)", file=sys.stderr)
        return 1
