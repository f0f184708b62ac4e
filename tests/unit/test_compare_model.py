"""`compare --model PATH`: a checkpoint file or folder of the run, scored by `evaluate`
(its `eval/<name>-<split>/summary.json`), compared with a baseline; a path that is no
checkpoint, or one not scored yet, is one line and exit code 2."""

from __future__ import annotations

import pytest
import torch
from test_scores import nnunet_summary, write_csv, write_json, write_run

from search.cli import main


@pytest.fixture
def run(tmp_path):
    run = write_run(tmp_path, "a")
    write_csv(tmp_path, "class,mean\nheart,0.9\naorta,0.5\n", "b.csv")
    return run


@pytest.mark.parametrize("where, name", [
    ("ckpt/swa.pt", "swa"),  # a file: its stem
    ("trial_x/checkpoint_000003", "checkpoint_000003"),  # a folder: its checkpoint.pt
    ("other/best.pt", "best-file"),  # never the run's own best, greedy or uniform
])
def test_a_checkpoint_scored_by_evaluate_is_compared(run, tmp_path, capsys, where, name):
    path = tmp_path / where
    file = path / "checkpoint.pt" if not path.suffix else path
    file.parent.mkdir(parents=True)
    torch.save({"model": {"w": torch.zeros(2)}}, file)
    write_json(run / "eval" / f"{name}-test" / "summary.json", nnunet_summary())
    assert main(["compare", str(run), "--baseline", str(tmp_path / "b.csv"), "--model",
                 str(path)]) == 0
    out, err = capsys.readouterr()
    folder = run / "compare" / f"{name}-test-vs-b"
    assert out == (folder / "compare.md").read_text()
    assert out.startswith(f"# a {name} (test) vs b.csv\n\nrun: `{run}/eval/{name}-test/"
                          "summary.json`")
    assert "| heart | 0.9450 | 0.9000 | +0.0450 | +5.0 |" in out
    assert f"written: {folder}/compare.md, compare.csv" in err


def _mistakes(tmp_path, run):
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    torch.save([1, 2], tmp_path / "list.pt")
    torch.save({"model": {"w": torch.zeros(2)}}, tmp_path / "fresh.pt")
    return [
        ("nope.pt", "--model {tmp}/nope.pt: not one of best, greedy, uniform and no checkpoint "
         "file there ({tmp}/nope.pt does not exist)"),
        ("notes.pt", "--model {tmp}/notes.pt: {tmp}/notes.pt is not a segtune checkpoint "
         "(torch.load(weights_only=True) refused it: "),
        ("list.pt", "--model {tmp}/list.pt: {tmp}/list.pt is not a segtune checkpoint (a dict "
         "with 'model' weights); it holds list"),
        ("fresh.pt", "--model {tmp}/fresh.pt: not scored on the test split yet (no "
         f"{run}/eval/fresh-test/summary.json); score it with: python -m search evaluate "
         f"{run} --model {{tmp}}/fresh.pt --split test"),
    ]


def test_a_path_that_is_no_scored_checkpoint_is_one_line(run, tmp_path, capsys):
    for name, message in _mistakes(tmp_path, run):
        assert main(["compare", str(run), "--baseline", str(tmp_path / "b.csv"), "--model",
                     str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("segtune: error: " + message.format(tmp=tmp_path)), err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert not (run / "compare").exists()


def test_a_scored_checkpoint_is_a_baseline_too(run, tmp_path, capsys):
    file = tmp_path / "ckpt" / "swa.pt"
    file.parent.mkdir()
    torch.save({"model": {"w": torch.zeros(2)}}, file)
    write_json(run / "eval" / "swa-test" / "summary.json", nnunet_summary())
    assert main(["compare", str(run), "--baseline", str(file), "--model", "greedy"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# a greedy (test) vs a swa (test)\n")
    assert "| heart | 0.9000 | 0.9450 | -0.0450 | -4.8 |" in out
    assert (run / "compare" / "greedy-test-vs-swa" / "compare.md").is_file()
    (tmp_path / "other.pt").write_text("not a checkpoint")
    assert main(["compare", str(run), "--baseline", str(tmp_path / "other.pt")]) == 2
    assert capsys.readouterr().err.startswith(
        f"segtune: error: --baseline {tmp_path / 'other.pt'}: {tmp_path / 'other.pt'} is not a "
        "segtune checkpoint (torch.load(weights_only=True) refused it")
