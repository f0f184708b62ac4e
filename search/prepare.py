"""What a search does before its first trial: check the data case by case, split it, build
the preprocessed cache (both over Ray tasks for large inputs, with a progress line), and check
the device and the Ray cluster's resources against the spec."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import ray

from search.errors import ResourceError
from search.spec import Spec, SpecError
from train_fn.data import MISSING, build_entry, cache_entry, cache_root, entry_problem
from train_fn.datasets import check_dataset, open_dataset, split_cases

# Private Ray, kept on purpose: Ray 2.60 has no public "does this cluster autoscale" query
# (`ray.autoscaler.sdk` only acts on a cluster config; `ray.autoscaler.v2.sdk` is unannotated
# and needs a private GcsClient). This is the test Tune itself uses to decide whether trials
# that fit no node are an error (`insufficient_resources_manager`), so segtune judges as Tune
# does. Should Ray drop it, the fallback is "not autoscaling": refuse with the one-line error.
try:
    from ray.tune.execution.cluster_info import _is_ray_cluster
except ImportError:
    _is_ray_cluster = None

logger = logging.getLogger(__name__)


def prepare_data(spec: Spec) -> tuple[Path, dict[str, list[str]]]:
    """The dataset folder (phantoms are generated on first use), checked file by file before
    anything trains (spread over Ray tasks when Ray is up), and the patient split."""
    dataset = open_dataset(spec.data)
    split = split_cases([c.case_id for c in dataset.cases], spec.data.val_fraction,
                        spec.data.test_fraction, spec.data.split_seed)
    check_dataset(dataset, map_cases=lambda check, pairs: parallel_map(
        check, pairs, "data check", remote=_is_large(dataset.cases)))
    logger.info("data %s: %d cases, channels %s, labels %s; split %s", dataset.root,
                len(dataset.cases), list(dataset.channels), dataset.labels,
                {k: len(v) for k, v in split.items()})
    return Path(dataset.root), split


def build_cache(spec: Spec, data_root: str | Path, split: dict[str, list[str]]) -> None:
    """Preprocess every case of the split that is not cached yet, once, before any trial
    starts: spread over Ray tasks (every node of a cluster, the local cores otherwise), with
    a progress line. Every entry already there is checked to its content first (SHA-256 of
    each file: ~0.08 s per SegTHOR-sized case, bench/RESULTS.md); a damaged one is named and
    rebuilt. Trials then only memory-map the cache (after a check without hashing). The
    cache folder must be shared by the nodes (or each node builds what its trials miss,
    inside the trial)."""
    ds = open_dataset(spec.data, data_root)
    cases = ds.subset(sorted({c for part in split.values() for c in part}))
    if not spec.data.cache:
        return
    start = time.monotonic()
    missing = []
    for case in cases:
        problem = entry_problem(spec.data, case, deep=True)
        if problem is not None and problem != MISSING:
            logger.warning("cache: %s: %s; rebuilding it", cache_entry(spec.data, case),
                           problem)
        if problem is not None:
            missing.append(case)
    if not missing:
        logger.info("cache: all %d cases preprocessed in %s (content checked in %.1f s)",
                    len(cases), cache_root(spec.data), time.monotonic() - start)
        return
    logger.info("cache: preprocessing %d of %d cases into %s", len(missing), len(cases),
                cache_root(spec.data))
    parallel_map(build_entry, [(c, spec.data, False, False) for c in missing], "cache",
                 remote=_is_large(missing), memory=[_prep_memory(c) for c in missing])


def _prep_memory(case) -> int:
    """Bytes a preprocessing task may peak at, for Ray to place no more tasks on a node than
    its memory holds: ~16 float32 copies of the image (measured: 3.0-3.4 GiB for
    512 x 512 x ~200 voxels resampled to 1.5 x 1.5 x 2.5 mm; bench/RESULTS.md)."""
    shape = nib.load(case.image).shape  # the header only
    voxels = int(np.prod(shape))
    return max(2**29, 16 * 4 * voxels)


# Below this much input, Ray tasks (a worker start and imports each) cost more than they save.
LARGE_INPUT_BYTES = 256 * 2**20


def _is_large(cases) -> bool:
    return sum(os.path.getsize(c.image) + os.path.getsize(c.label) for c in cases) \
        >= LARGE_INPUT_BYTES


class Progress:
    """`<what>: done/total, rate, ETA` on the log, at most every `every` seconds and at
    the end."""

    def __init__(self, what: str, total: int, every: float = 5.0):
        self.what, self.total, self.every = what, total, every
        self.start = self.last = time.monotonic()
        self.done = 0

    def step(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last < self.every and self.done < self.total:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        tail = (f"ETA {(self.total - self.done) / rate:.0f}s" if self.done < self.total
                else f"took {elapsed:.1f}s")
        logger.info("%s: %d/%d cases (%.2f cases/s), %s", self.what, self.done, self.total,
                    rate, tail)


def parallel_map(fn, arg_tuples: list[tuple], what: str, remote: bool = True,
                 memory: list[int] | None = None) -> list[Any]:
    """`fn(*args)` for each tuple, in order: with `remote` and Ray up, as Ray tasks (one CPU
    each, and `memory[i]` bytes of Ray's memory resource when given, on any node); else here
    one by one. With a progress line either way."""
    progress = Progress(what, len(arg_tuples))
    if not remote or not ray.is_initialized() or len(arg_tuples) < 2:
        out = []
        for args in arg_tuples:
            out.append(fn(*args))
            progress.step()
        return out
    remote = ray.remote(num_cpus=1, max_retries=0)(fn)
    if memory:  # never more than the largest node has: that task would wait forever
        largest = max(n.get("Resources", {}).get("memory", 0) for n in ray.nodes()
                      if n.get("Alive"))
        memory = [min(m, int(largest)) for m in memory]
    refs = [(remote.options(memory=memory[i]) if memory else remote).remote(*args)
            for i, args in enumerate(arg_tuples)]
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                results[index[ref]] = ray.get(ref)
                progress.step()
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return results


def check_device(spec: Spec) -> None:
    """Refuse CUDA trials that ask Ray for no GPU (checked before anything is written)."""
    if spec.train.device == "cuda" and not spec.resources.gpu:
        raise SpecError("train.device is cuda but resources.gpu is 0: a trial that asks Ray "
                        "for no GPU may not use one (Ray would not count it, and every trial "
                        "would land on the first GPU); set resources.gpu (1 per trial, or 0.5 "
                        "/ 0.25 to share a GPU), or train.device auto or cpu")


def check_resources(spec: Spec) -> None:
    """Refuse a search whose trials no node of the Ray cluster can host: Ray Tune would keep
    them pending forever, with a warning a minute. On an autoscaling cluster the nodes may
    still come: then only warn."""
    need = {"CPU": spec.resources.cpu, "GPU": spec.resources.gpu}
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    gpus = sum(node.get("GPU", 0) for node in nodes)
    if gpus and not spec.resources.gpu and spec.train.device == "auto":
        logger.warning("the Ray cluster has %g GPU(s) but resources.gpu is 0: trials train on "
                       "CPU; set resources.gpu to train on GPUs (0.25: 4 trials per GPU)", gpus)
    if any(all(node.get(k, 0) >= v for k, v in need.items() if v) for node in nodes):
        return
    have = "; ".join(f"{n.get('CPU', 0):g} CPUs, {n.get('GPU', 0):g} GPUs" for n in nodes)
    text = (f"resources: each trial asks for {need['CPU']:g} CPUs (resources.cpu) and "
            f"{need['GPU']:g} GPUs (resources.gpu), but no node of the Ray cluster has as "
            f"many ({len(nodes)} node(s): {have or 'none'})")
    autoscaling = _is_ray_cluster() if _is_ray_cluster is not None else False
    if autoscaling:
        logger.warning("%s; waiting for the autoscaler to add one", text)
        return
    raise ResourceError(f"{text}: lower them, or start Ray on nodes that have them")
