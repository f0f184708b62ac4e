from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from search.soup import SoupError, average, check_ingredients, greedy


def state(value: float, count: int = 3):
    return {"w": torch.full((2, 2), value), "b": torch.tensor([value]),
            "num_batches_tracked": torch.tensor(count)}


def test_average_is_elementwise_mean_and_copies_integer_buffers():
    soup = average([state(1.0, 3), state(2.0, 5), state(6.0, 9)])
    assert torch.equal(soup["w"], torch.full((2, 2), 3.0))
    assert soup["w"].dtype == torch.float32
    assert soup["num_batches_tracked"].item() == 3  # copied from the first, not averaged
    assert soup["num_batches_tracked"].dtype == torch.int64
    with pytest.raises(SoupError, match="nothing to average"):
        average([])


def test_greedy_keeps_only_candidates_that_do_not_hurt():
    # Score peaks when the mean weight is 2. A (1.8) goes first; B (2.2) brings the mean to 2;
    # C (10) would drag it away and is rejected; D (2.0) keeps it at 2 (equal: accepted).
    score = lambda w: -abs(float(w["w"].mean()) - 2.0)  # noqa: E731
    cands = [("A", state(1.8)), ("B", state(2.2)), ("C", state(10.0)), ("D", state(2.0))]
    kept, soup, steps = greedy(cands, score)
    assert kept == ["A", "B", "D"]
    assert [s["accepted"] for s in steps] == [True, True, False, True]
    assert steps[0] == {"trial_id": "A", "val_dice": pytest.approx(-0.2), "accepted": True}
    assert steps[2]["val_dice"] == pytest.approx(-(14 / 3 - 2))
    assert float(soup["w"].mean()) == pytest.approx(2.0)
    # Equal score is accepted (the rule is "does not drop").
    kept, _, _ = greedy([("A", state(1.0)), ("B", state(1.0))], lambda w: 0.5)
    assert kept == ["A", "B"]


def lineage(**over):
    base = {"architecture": {"name": "unet", "channels": [8, 16], "strides": [2]},
            "init_fingerprint": "abc", "init_seed": 0}
    return {**base, **over}


def test_a_ctrl_c_that_a_library_swallowed_still_stops_the_greedy_soup():
    # A stop signal whose KeyboardInterrupt a library on the way caught still stops the soup
    # before its next candidate (and before its results are published).
    from search import stopping

    scored = []

    def score(weights):
        scored.append(float(weights["w"].mean()))
        if len(scored) == 2:
            try:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while B is scored...
                time.sleep(5)
            except KeyboardInterrupt:
                pass  # ...and a library on the way catches it
        return 1.0

    before = signal.signal(signal.SIGINT, stopping._on_sigint)
    try:
        with pytest.raises(stopping.Stopped, match="signal 2"):
            greedy([("A", state(1.0)), ("B", state(2.0)), ("C", state(3.0))], score)
        assert scored == [1.0, 1.5]  # C was never loaded nor scored
        assert stopping.exit_code() == 130
    finally:
        signal.signal(signal.SIGINT, before)
        stopping._received.clear()


def test_refuses_different_architecture_naming_the_difference():
    other = lineage(architecture={"name": "unet", "channels": [8, 32], "strides": [2]})
    with pytest.raises(SoupError, match=r"trial t2 with trial t1: different architecture: "
                                        r"channels \[8, 16\] vs \[8, 32\]"):
        check_ingredients({"t1": lineage(), "t2": other})


def test_refuses_different_initial_weights():
    other = lineage(init_fingerprint="def", init_seed=1)
    with pytest.raises(SoupError, match=r"different init_fingerprint: initial weights abc vs "
                                        r"def \(init_seed 0 vs 1\)"):
        check_ingredients({"t1": lineage(), "t2": other})
    check_ingredients({"t1": lineage(), "t2": lineage()})  # same lineage: fine


def test_soups_stream_their_ingredients_once_each():
    loads = []

    def loader(value):
        def load():
            loads.append(value)
            return state(value)
        return load

    soup = average([loader(v) for v in (1.0, 2.0, 6.0)])
    assert torch.equal(soup["w"], torch.full((2, 2), 3.0)) and loads == [1.0, 2.0, 6.0]
    loads.clear()
    score = lambda w: -abs(float(w["w"].mean()) - 2.0)  # noqa: E731
    kept, soup, _ = greedy([(k, loader(v)) for k, v in
                            [("A", 1.8), ("B", 2.2), ("C", 10.0), ("D", 2.0)]], score)
    assert kept == ["A", "B", "D"] and loads == [1.8, 2.2, 10.0, 2.0]
    assert float(soup["w"].mean()) == pytest.approx(2.0)


def test_the_cli_and_driver_modules_start_without_torch():
    """torch costs seconds to import; the driver needs it only for the soups at the end."""
    import subprocess
    import sys

    code = ("import sys, search.cli, search.api, search.soup, search.tracking; "
            "print(sorted(m for m in ('torch', 'monai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_running_sum_in_float32_matches_a_float64_mean_and_keeps_each_dtype():
    gen = torch.Generator().manual_seed(0)
    models = [{"w": torch.randn(4096, generator=gen) * 0.05 + 0.3,
               "h": torch.randn(64, generator=gen).to(torch.bfloat16)} for _ in range(32)]
    soup = average(models)
    exact = torch.stack([m["w"].double() for m in models]).mean(0)
    assert soup["w"].dtype == torch.float32 and soup["h"].dtype == torch.bfloat16
    assert float((soup["w"].double() - exact).abs().max()) < 1e-6
    exact_h = torch.stack([m["h"].double() for m in models]).mean(0)
    # bf16 inputs are summed in float32: only the final rounding to bf16 remains.
    torch.testing.assert_close(soup["h"], exact_h.to(torch.bfloat16), rtol=0, atol=0)


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_tidy_brings_a_killed_soup_step_back_to_what_summary_json_names(tmp_path):
    import json
    import os

    from search.soup import switch_soups, tidy
    from search.summary import Summary

    dead = _dead_pid()
    named, orphan = tmp_path / f".soup-1-{dead}", tmp_path / f".soup-2-{dead}"
    for folder in (named, orphan):
        (folder / "greedy").mkdir(parents=True)
        (folder / "greedy" / "checkpoint.pt").write_bytes(b"x")
    # Killed after summary.json named the new set and before the link followed it, with a
    # temporary file of another killed write left over.
    (tmp_path / "summary.json").write_text(json.dumps({"soup_set": named.name}))
    (tmp_path / "soup").symlink_to(orphan.name)
    stale = tmp_path / "eval" / f".summary.json.tmp-{dead}"
    stale.parent.mkdir()
    stale.write_text("{")
    live = tmp_path / f".run.json.tmp-{os.getppid()}"  # a live writer's file is left alone
    live.write_text("{")
    tidy(tmp_path)
    assert os.readlink(tmp_path / "soup") == named.name
    assert named.is_dir() and not orphan.exists() and not stale.exists() and live.exists()

    # A run folder of an older segtune has a real soup/ folder: switching replaces it.
    (tmp_path / "soup").unlink()
    (tmp_path / "soup" / "greedy").mkdir(parents=True)
    switch_soups(tmp_path, Summary(), named)
    assert os.readlink(tmp_path / "soup") == named.name
    assert [p.name for p in tmp_path.glob(".soup-*")] == [named.name]
    switch_soups(tmp_path, Summary(), None)  # no soups: no link, no set
    assert not (tmp_path / "soup").is_symlink() and not named.exists()
    assert json.loads((tmp_path / "summary.json").read_text())["soup_set"] is None


@pytest.mark.parametrize("where", ["write", "replace"])
def test_an_interrupted_json_write_keeps_the_previous_file(tmp_path, monkeypatch, where):
    import json
    import os
    from pathlib import Path

    from train_fn.files import write_json

    path = tmp_path / "summary.json"
    write_json(path, {"best": "a"})

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    if where == "write":
        monkeypatch.setattr(Path, "write_text", killed)
    else:
        monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_json(path, {"best": "b"})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"best": "a"}


def test_an_errored_or_unreadable_trial_never_becomes_the_best_or_an_ingredient(tmp_path):
    import torch

    from search.soup import readable
    from search.summary import TrialRecord
    from train_fn.checkpoint import save_checkpoint

    (tmp_path / "run.json").write_text("{}")
    for name in ("b", "c"):
        save_checkpoint(tmp_path / f"trial_{name}" / "checkpoint_000001", {"w": torch.ones(2)})
    (tmp_path / "trial_d" / "checkpoint_000001").mkdir(parents=True)
    (tmp_path / "trial_d" / "checkpoint_000001" / "checkpoint.pt").write_bytes(b"PK\x03\x04")
    trials = [TrialRecord(t, val_dice=v, checkpoint=f"trial_{t}/checkpoint_000001")
              for t, v in (("d", 0.9), ("b", 0.7), ("c", 0.6))]
    # d ranks first but its checkpoint was cut short: skipped, b is the best.
    assert [t.trial_id for t in readable(tmp_path, trials, 2)] == ["b", "c"]
    assert [t.trial_id for t in readable(tmp_path, trials, 1)] == ["b"]


def test_candidates_are_ranked_best_first_and_never_an_errored_trial():
    from pathlib import Path

    from search.soup import candidates
    from search.summary import Summary

    trials = [{"trial_id": "err", "status": "error", "val_dice": 0.99, "checkpoint": "c1"},
              {"trial_id": "low", "status": "stopped", "val_dice": 0.2, "checkpoint": "c2"},
              {"trial_id": "high", "status": "completed", "val_dice": 0.7, "checkpoint": "c3"},
              {"trial_id": "none", "status": "stopped", "val_dice": None, "checkpoint": None}]
    ranked = candidates(Path("run"), Summary.from_json({"trials": trials}))
    assert [t.trial_id for t in ranked] == ["high", "low"]


BN_SPEC = """
data:
  source: phantom
  cases: 6
model:
  name: dynunet
  channels: [4, 8, 16]
  strides: [1, 2, 2]
  norm: batch
optimizer:
  name: novograd
  lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}
train:
  patch_size: [16, 16, 16]
  batch_size: 2
  sw_batch_size: 2
  val_hd95: false
  device: cpu
soup:
  top_k: 3
"""


def test_a_batchnorm_soup_gets_statistics_of_its_own_weights(tmp_path, phantom_root,
                                                             monkeypatch):
    """finish() on a hand-made run of three BatchNorm trials (one init, perturbed weights,
    running statistics that fit none of the averages) and an errored one ranked first: each
    soup's statistics are those its averaged weights give on the fixed training patches, not
    an average of the ingredients'; the errored trial is neither the best nor an ingredient."""
    import json

    from search.soup import finish
    from search.spec import load_spec
    from train_fn.checkpoint import load_checkpoint, save_checkpoint
    from train_fn.data import PatchSampler, load_volumes
    from train_fn.datasets import find_cases
    from train_fn.loop import BN_EPOCH
    from train_fn.models import architecture, build_model, refresh_batchnorm, weights_fingerprint

    run = tmp_path / "bn"
    run.mkdir()
    (run / "spec.yaml").write_text(BN_SPEC.lstrip())
    spec = load_spec(run / "spec.yaml").resolve({"optimizer.lr": 0.01})
    torch.manual_seed(spec.model.init_seed)
    net = build_model(spec.model, 1, 5)
    lineage = {"architecture": architecture(spec.model, 1, 5),
               "init_fingerprint": weights_fingerprint(net), "init_seed": 0}
    gen = torch.Generator().manual_seed(1)
    trials, ingredients = [], []
    for i, dice in enumerate((0.6, 0.5, 0.4)):
        state = {}
        for k, v in net.state_dict().items():
            if k.endswith("running_mean"):
                v = torch.full_like(v, 50.0 + i)  # no patch gives these
            elif k.endswith("running_var"):
                v = torch.full_like(v, 1e-3)
            elif v.is_floating_point():
                v = v + 0.05 * torch.randn(v.shape, generator=gen)
            state[k] = v.clone()
        ingredients.append(state)
        save_checkpoint(run / f"trial_{i}" / "checkpoint_000001",
                        {"model": state, "config": spec.flat(), **lineage})
        trials.append({"trial_id": str(i), "status": "completed", "val_dice": dice,
                       "val_dice_per_class": {}, "config": {"optimizer.lr": 0.01},
                       "checkpoint": f"trial_{i}/checkpoint_000001"})
    # An errored trial ranked first, with a sound-looking checkpoint: never chosen.
    save_checkpoint(run / "trial_err" / "checkpoint_000001",
                    {"model": ingredients[0], "config": spec.flat(), **lineage})
    trials.insert(0, {"trial_id": "err", "status": "error", "val_dice": 0.9,
                      "val_dice_per_class": {}, "config": {"optimizer.lr": 0.01},
                      "checkpoint": "trial_err/checkpoint_000001", "error": "ValueError: x"})
    split = {"train": ["Patient_01", "Patient_02"], "val": ["Patient_03"],
             "test": ["Patient_04"]}
    (run / "run.json").write_text(json.dumps({"name": "bn", "data_root": str(phantom_root),
                                              "split": split}))
    (run / "summary.json").write_text(json.dumps({"trials": trials}))
    # Scoring is not the point (and full-volume inference is slow): every model scores 0.5.
    import train_fn.metrics

    monkeypatch.setattr(train_fn.metrics, "evaluate", lambda *a, **k: (0.5, {}, {}))
    summary = finish(run)
    assert summary.best.trial_id == "0"
    assert summary.soups["greedy"].ingredients == ["0", "1", "2"]
    assert summary.soups["uniform"].ingredients == ["0", "1", "2"]

    cases = {c.case_id: c for c in find_cases(phantom_root)}
    vols = load_volumes([cases[c] for c in split["train"]], spec.data)
    patches = [x for x, _ in PatchSampler(vols, spec.train.patch_size, spec.train.seed, 5)
               .epoch(BN_EPOCH, 8, spec.train.batch_size)]
    stats = [k for k in net.state_dict() if k.endswith(("running_mean", "running_var"))]
    assert stats
    for kind in ("uniform", "greedy"):
        soup = load_checkpoint(run / summary.soups[kind].weights.rsplit("/", 1)[0])
        chosen = [ingredients[int(t)] for t in summary.soups[kind].ingredients]
        averaged = {k: (sum(s[k].double() for s in chosen) / len(chosen)).to(v.dtype)
                    if v.is_floating_point() else v for k, v in chosen[0].items()}
        model = build_model(spec.model, 1, 5)
        model.load_state_dict(averaged)
        refresh_batchnorm(model, patches)
        for key in stats:
            assert not torch.allclose(soup["model"][key], averaged[key])
            torch.testing.assert_close(soup["model"][key], model.state_dict()[key],
                                       rtol=1e-4, atol=1e-5)


def test_an_interrupted_checkpoint_save_keeps_the_previous_file(tmp_path, monkeypatch):
    """Checkpoints go through the same atomic writer as every JSON file: a kill inside
    torch.save leaves the previous checkpoint whole, and no temporary file."""
    from train_fn.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(tmp_path, {"w": torch.ones(3)})

    def killed(obj, f, *args, **kwargs):
        with open(f, "wb") as half:
            half.write(b"PK\x03")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, {"w": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(tmp_path)["w"], torch.ones(3))
    assert not list(tmp_path.glob(".*.tmp-*"))
