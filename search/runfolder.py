"""A run folder: the one place that knows its files and reads them.

`<storage>/<name>/` holds `run.json` (what the run was made from: data, split, MLflow run,
object store), `spec.yaml` (the spec as searched, after the LR finder), `split.json`,
`summary.json` (the trials, the best trial, the soups; it also names the soup set in use),
`soup/` (a link to that set), `plots/`, `eval/`, `compare/`, `splits.json` and one folder per
`repeat` / `crossval`. Every command that works on a finished or ongoing run (soup, evaluate,
predict, repeat, crossval, compare, resume) opens it as a `RunFolder`: its typed `run.json`,
its spec, split and summary, its MLflow tracker, and the dataset, device and network that
scoring and souping share.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from search.errors import ArgumentError, RunFolderError
from search.lazy import LazyModule
from search.spec import Spec, dump_spec, load_spec
from search.summary import Record, Summary
from search.tracking import Tracker, TrackingError, check_tracking, run_tracker
from train_fn.data import load_volumes
from train_fn.datasets import Dataset, open_dataset
from train_fn.files import write_json, write_text
from train_fn.models import build_model

if TYPE_CHECKING:
    import torch

# torch and MONAI load when a command scores or soups, not before (search.lazy)
loop = LazyModule("train_fn.loop")
metrics = LazyModule("train_fn.metrics")

logger = logging.getLogger(__name__)

RUN_JSON = "run.json"
SPEC_YAML = "spec.yaml"
SUMMARY_JSON = "summary.json"
SPLIT_JSON = "split.json"
SPLITS_JSON = "splits.json"
SOUP_LINK = "soup"  # -> the soup set that summary.json names
MODELS = ("best", "greedy", "uniform")  # a run's models: the best trial and its two soups


def use_every_core() -> None:
    """Give torch every CPU: scoring, souping and predicting run in the driver alone, where a
    trial's torch would use the CPUs Ray granted it."""
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))


@dataclass
class RunInfo(Record):
    """`run.json`, as `search.api` writes it when a run starts. Every field may be missing
    from a folder of an older segtune (or a test's); keys this version does not know are
    kept in `extra` and written back."""

    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"storage_uri"})  # an object store's run

    name: str = ""
    home: str | None = None  # where the folder was made (a copy may not write into its run)
    spec_file: str | None = None
    data_root: str | None = None
    split: dict[str, list[str]] = field(default_factory=dict)
    tracking_uri: str | None = None
    experiment: str | None = None
    segtune: str | None = None  # the version that made the run
    started: str | None = None
    input_spec: dict[str, Any] = field(default_factory=dict)  # the spec as given, flat
    parent_run_id: str | None = None
    storage_uri: str | None = None  # Ray's experiment is at <storage_uri>/<name>

    def to_json(self) -> dict[str, Any]:
        return copy.deepcopy(super().to_json())  # a caller may change it; this stays


class RunFolder:
    """A run folder's paths and files. Nothing is read until asked for; `info`, `spec` and
    the dataset are read once, `summary()` each time (the soup step rewrites it)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # -- paths ------------------------------------------------------------------------------
    @property
    def run_json(self) -> Path:
        return self.path / RUN_JSON

    @property
    def spec_yaml(self) -> Path:
        return self.path / SPEC_YAML

    @property
    def summary_json(self) -> Path:
        return self.path / SUMMARY_JSON

    @property
    def split_json(self) -> Path:
        return self.path / SPLIT_JSON

    @property
    def splits_json(self) -> Path:
        return self.path / SPLITS_JSON

    @property
    def soup_link(self) -> Path:
        return self.path / SOUP_LINK

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    def eval_dir(self, model: str, split: str) -> Path:
        """Where `evaluate` writes the predictions and scores of `model` on `split`."""
        return self.path / "eval" / f"{model}-{split}"

    def compare_dir(self, name: str) -> Path:
        return self.path / "compare" / name

    # -- what is there ----------------------------------------------------------------------
    def is_run(self) -> bool:
        """Whether a search started here (it wrote run.json)."""
        return self.run_json.is_file()

    def is_finished(self) -> bool:
        """Whether the search's trials ended (it wrote summary.json)."""
        return self.summary_json.is_file()

    # -- run.json ---------------------------------------------------------------------------
    @cached_property
    def info(self) -> RunInfo:
        """The typed run.json."""
        if not self.is_run():
            raise RunFolderError(f"{self.path}: not a segtune run folder (no run.json)")
        return RunInfo.from_json(_read_json(self.run_json))

    def write_info(self, info: RunInfo) -> None:
        write_json(self.run_json, info.to_json())
        self.__dict__["info"] = info

    @property
    def split(self) -> dict[str, list[str]]:
        """The run's train / val / test case ids."""
        return self.info.split

    def write_split(self, split: dict[str, list[str]]) -> None:
        """split.json: the split on its own, for reading without run.json."""
        write_json(self.split_json, split)

    @property
    def data_root(self) -> str | None:
        return self.info.data_root

    @property
    def experiment_location(self) -> str:
        """Ray's experiment of the run: `<storage URI>/<name>` when run.json records an
        object-store storage, else the run folder itself."""
        info = self.info if self.is_run() else RunInfo()
        if info.storage_uri:  # always a URI (s3://...): joined with '/'
            return f"{info.storage_uri.rstrip('/')}/{info.name}"
        return str(self.path.resolve())

    # -- spec.yaml --------------------------------------------------------------------------
    @cached_property
    def spec(self) -> Spec:
        """The spec the search ran (with the LR finder's range)."""
        if not self.spec_yaml.is_file():
            raise RunFolderError(f"{self.path}: not a segtune run folder (no spec.yaml)")
        return load_spec(self.spec_yaml)

    def write_spec(self, spec: Spec) -> None:
        write_text(self.spec_yaml, dump_spec(spec))
        self.__dict__.pop("spec", None)

    # -- summary.json -----------------------------------------------------------------------
    def summary(self) -> Summary:
        """summary.json as it is now."""
        if not self.is_finished():
            raise RunFolderError(f"{self.path}: no summary.json (not a finished segtune run "
                                 "folder)")
        data = _read_json(self.summary_json)
        if not isinstance(data, dict):
            raise RunFolderError(f"{self.summary_json}: not a segtune summary (a JSON object)")
        return Summary.from_json(data)

    def write_summary(self, summary: Summary) -> None:
        """Write summary.json at once (a kill leaves the old one or the new one)."""
        write_json(self.summary_json, summary.to_json())

    # -- MLflow -----------------------------------------------------------------------------
    def tracker(self, reopen: bool = False) -> Tracker:
        """The tracker on the run's parent MLflow run (RUNNING again with `reopen`)."""
        if not self.info.tracking_uri or not self.info.parent_run_id:
            raise RunFolderError(f"{self.path}: no MLflow run recorded in run.json")
        return run_tracker(self.path, self.info.to_json(), reopen=reopen)

    def tracker_or_none(self, otherwise: str) -> Tracker | None:
        """The tracker, or None with a warning ending in `otherwise` when the store is gone
        or offline, or when run.json records no MLflow run (the files hold the results). A
        copied folder is still refused."""
        if not self.info.tracking_uri or not self.info.parent_run_id:
            logger.warning("%s: no MLflow run recorded in run.json; %s", self.path, otherwise)
            return None
        try:
            return self.tracker()
        except TrackingError:
            raise
        except Exception as err:  # noqa: BLE001 - any store failure: the files are written
            logger.warning("MLflow store %s unavailable (%s); %s", self.info.tracking_uri, err,
                           otherwise)
            return None

    def log_parent(self, metrics: dict[str, float], artifacts: list[Path], otherwise: str,
                   **kwargs: Any) -> str | None:
        """Log to the run's parent MLflow run; the parent run's id, or None with a warning
        ending in `otherwise` when the store is gone or offline. A copied folder is still
        refused (TrackingError)."""
        tracker = self.tracker_or_none(otherwise)
        if tracker is None:
            return None
        try:
            tracker.log_parent(metrics, artifacts, **kwargs)
        except Exception as err:  # noqa: BLE001 - any store failure: the files are written
            logger.warning("MLflow store %s unavailable (%s); %s", self.info.tracking_uri, err,
                           otherwise)
            return None
        return self.info.parent_run_id

    def rehome(self, uri: str, what: str = "--tracking-uri") -> RunInfo:
        """Give the folder a new parent run in the store `uri` (a copied or moved folder, or
        a run whose store is gone) and record it in run.json; later results of the folder go
        there. The earlier trials' runs stay where they were. No-op when the folder is home
        and already logs to `uri`."""
        info = self.info
        here = str(self.path.resolve())
        if info.tracking_uri == uri and (info.home or here) == here:
            return info
        check_tracking(uri, what)
        tracker = Tracker(uri, info.experiment, info.name, self.path)
        tags = {"segtune.copied_from": info.home} if (info.home or here) != here else {}
        info.parent_run_id = tracker.start_parent(self.spec.flat(), list(self.spec.searched()),
                                                  tags=tags)
        info.tracking_uri, info.home = uri, here
        tracker.close_all("FINISHED")
        self.write_info(info)
        logger.info("%s now logs to MLflow %s (parent run %s)", self.path, uri,
                    info.parent_run_id)
        return info

    # -- data, device, network --------------------------------------------------------------
    @cached_property
    def dataset(self) -> Dataset:
        """The run's dataset (its cases, channels, labels and regions)."""
        return open_dataset(self.spec.data, self.data_root)

    def volumes(self, cases: str | list[str], labels: bool = True) -> list[dict[str, Any]]:
        """The preprocessed volumes of a part of the split (`"test"`) or of case ids; without
        `labels`, without the per-class sampling locations (BatchNorm patches). Cache entries
        are checked to their content (hashes) here, on the driver."""
        ids = self.split[cases] if isinstance(cases, str) else cases
        ds = self.dataset
        return load_volumes(ds.subset(ids), self.spec.data, ds.num_classes if labels else None,
                            deep=True)

    def device(self, choice: str | None = None) -> torch.device:
        """`choice`, else the spec's `train.device` (auto: CUDA when there is one)."""
        choice = choice or self.spec.train.device
        if choice == "cuda" and not loop.torch.cuda.is_available():
            raise ArgumentError(f"--device cuda (or {self.path}/spec.yaml train.device): no "
                                "CUDA device on this machine; use --device cpu or auto")
        return loop.pick_device(choice)

    def network(self, device: torch.device | None = None) -> torch.nn.Module:
        """A fresh network of the run's architecture for its dataset, on `device`."""
        ds = self.dataset
        net = build_model(self.spec.model, len(ds.channels), ds.num_classes)
        return net.to(device) if device is not None else net

    def scorer(self, device: torch.device | None = None) -> Scorer:
        """One network on the run's device that scores weights on volumes."""
        device = device or self.device()
        return Scorer(self, self.network(device), device)


class Scorer:
    """Weights in, scores out: the run's network loaded with `weights`, its mean Dice, per
    region Dice and HD95 on `volumes` (train_fn.metrics.evaluate)."""

    def __init__(self, folder: RunFolder, model: torch.nn.Module, device: torch.device):
        self.folder, self.model, self.device = folder, model, device

    def __call__(self, weights: dict[str, torch.Tensor], volumes: list[dict[str, Any]],
                 hd95: bool = False) -> tuple[float, dict[str, float], dict[str, float]]:
        self.model.load_state_dict(weights)
        spec = self.folder.spec
        return metrics.evaluate(self.model, volumes, spec.train, self.device,
                                self.folder.dataset.regions, with_hd95=hd95)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RunFolderError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") \
            from None
