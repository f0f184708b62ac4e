"""`search.compare`: the table of a run against a baseline (changes, one-sided classes, the
mean of shared classes, HD95), its Markdown and CSV, and the `compare` command. Reading the
scores: tests/unit/test_scores.py."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
from test_scores import nnunet_summary, write_csv, write_json, write_run

from search.cli import main
from search.compare import (
    CompareError,
    Stat,
    compare,
    compare_run,
    read_csv,
    read_run,
    to_csv,
    to_markdown,
)


# -- the table --------------------------------------------------------------------------------
def test_changes_one_sided_classes_and_the_mean_of_shared_classes(tmp_path):
    run = read_run(write_run(tmp_path))
    base = read_csv(write_csv(tmp_path, "class,mean,std\nesophagus,0.79,0.05\nheart,0.5,\n"
                                        "trachea,0,\nkidney,0.6,\n"))
    rows = {r.cls: r for r in compare(run, base)}
    assert list(rows) == ["esophagus", "heart", "trachea", "aorta", "kidney", "mean"]
    assert rows["heart"].change == pytest.approx(0.395)
    assert rows["heart"].change_pct == pytest.approx(79.0)
    assert rows["esophagus"].change_pct == pytest.approx(-100.0)
    assert rows["trachea"].change == 0 and rows["trachea"].change_pct is None  # 0 baseline
    assert rows["aorta"].baseline is None and rows["aorta"].change is None
    assert rows["kidney"].run is None and rows["kidney"].baseline == Stat(0.6)
    mean = rows["mean"]  # esophagus, heart, trachea only
    assert mean.run.mean == pytest.approx(0.895 / 3)
    assert mean.baseline.mean == pytest.approx(1.29 / 3)
    assert mean.note == "3 of 5 classes"

    md = to_markdown(list(rows.values()), run, base)
    assert "| class | a best (test) | " in md
    assert "| heart | 0.8950 | 0.5000 | +0.3950 | +79.0 |" in md
    assert "| esophagus | 0.0000 | 0.7900 ± 0.0500 | -0.7900 | -100.0 |" in md
    assert "| aorta | 0.6030 | - | - | - |" in md
    assert "| kidney | - | 0.6000 | - | - |" in md
    assert "| **mean** (3 of 5 classes) | 0.2983 | 0.4300 | -0.1317 | -30.6 |" in md
    assert "HD95" not in md

    table = list(csv.DictReader(io.StringIO(to_csv(list(rows.values())))))
    assert table[0] == {"metric": "dice", "class": "esophagus", "run_mean": "0.0",
                        "run_std": "", "baseline_mean": "0.79", "baseline_std": "0.05",
                        "change": "-0.79", "change_pct": "-100.0"}
    assert table[4]["run_mean"] == "" and table[4]["baseline_mean"] == "0.6"


def test_hd95_where_both_sides_have_it_and_a_note_where_one_does(tmp_path):
    run_dir = write_run(tmp_path)
    write_json(run_dir / "eval" / "best-test" / "summary.json", nnunet_summary())
    run = read_run(run_dir)
    both = read_csv(write_csv(tmp_path, "class,mean,metric\nheart,0.9,dice\n"
                                        "heart,5,hd95\naorta,3,hd95\n"))
    rows = compare(run, both)
    hd = {r.cls: r for r in rows if r.metric == "hd95"}
    assert hd["heart"].change == pytest.approx(-1.0) and hd["heart"].change_pct == -20.0
    assert hd["aorta"].run is None  # NaN in the summary: listed, not dropped
    assert hd["mean"].run.mean == pytest.approx(4.0) and hd["mean"].note == "1 of 4 classes"
    md = to_markdown(rows, run, both)
    assert "## HD95" in md and "| heart | 4.00 | 5.00 | -1.00 | -20.0 |" in md

    dice_only = read_csv(write_csv(tmp_path, "class,mean\nheart,0.9\n", "d.csv"))
    rows = compare(run, dice_only)
    assert {r.metric for r in rows} == {"dice"}
    assert "HD95: only a best (test) has it; not compared." in to_markdown(rows, run, dice_only)


def test_no_shared_class_gives_an_empty_mean_not_an_error(tmp_path):
    run = read_run(write_run(tmp_path))
    base = read_csv(write_csv(tmp_path, "class,mean\nliver,0.9\n"))
    mean = compare(run, base)[-1]
    assert mean.cls == "mean" and mean.run is None and mean.change is None
    assert math.isclose(compare(run, run)[-1].change, 0.0)


# -- the command ------------------------------------------------------------------------------
def test_cli_compare_prints_markdown_and_writes_files(tmp_path, capsys):
    run = write_run(tmp_path, "a")
    other = write_run(tmp_path, "b")
    assert main(["compare", str(run), "--baseline", str(other), "--model", "greedy",
                 "--baseline-model", "best"]) == 0
    out, err = capsys.readouterr()
    folder = run / "compare" / "greedy-test-vs-b-best"
    assert out == (folder / "compare.md").read_text()
    assert out.startswith(f"# a greedy (test) vs b best (test)\n\nrun: `{run}/summary.json`  \n"
                          f"baseline: `{other}/summary.json`\n")
    assert "| aorta | 0.7000 | 0.6030 | +0.0970 | +16.1 |" in out
    rows = list(csv.DictReader((folder / "compare.csv").open()))
    assert [r["class"] for r in rows] == ["esophagus", "heart", "trachea", "aorta", "mean"]
    assert float(rows[-1]["change"]) == pytest.approx((1.75 - 1.498) / 4)
    assert f"written: {folder}/compare.md, compare.csv" in err
    assert not list(tmp_path.glob("**/.*.tmp-*"))  # atomic writes left no temporary file


def test_nothing_to_compare_when_the_sides_share_no_metric(tmp_path):
    run = write_run(tmp_path)
    write_json(run / "eval" / "best-test" / "summary.json",
               {"mean": {"heart": {"HD95": 4.0}}, "foreground_mean": {"HD95": 4.0}})
    with pytest.raises(CompareError, match=r"nothing to compare: a best \(test\) has hd95, "
                                           r"b.csv has dice"):
        compare_run(run, write_csv(tmp_path, "class,mean\nheart,0.9\n", "b.csv"))


@pytest.mark.parametrize("args, message", [
    (["{run}", "--baseline", "{tmp}/missing.csv"], "--baseline {tmp}/missing.csv: no such "
                                                   "file or folder"),
    (["{tmp}/empty", "--baseline", "{tmp}/b.csv"], "empty: no results"),
    (["{run}", "--baseline", "{tmp}/bad.csv"], "bad.csv, line 2, column 'mean': '0,9' is not "
                                              "a number"),
])
def test_cli_compare_user_errors_exit_2_with_one_line(tmp_path, capsys, args, message):
    run = write_run(tmp_path)
    (tmp_path / "empty").mkdir()
    write_csv(tmp_path, "class,mean\nheart,0.9\n", "b.csv")
    write_csv(tmp_path, 'class,mean\nheart,"0,9"\n', "bad.csv")
    args = [a.format(run=run, tmp=tmp_path) for a in args]
    assert main(["compare", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segtune: error: ") and message.format(tmp=tmp_path) in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (run / "compare").exists()


def test_logs_the_table_to_the_runs_parent_mlflow_run(tmp_path):
    from mlflow.tracking import MlflowClient

    from search.tracking import Tracker, default_uri

    uri = default_uri(tmp_path)
    tracker = Tracker(uri, "a", "a", tmp_path / "a")
    parent = tracker.start_parent({"optimizer.lr": 0.1}, [])
    tracker.finish_parent("FINISHED")
    run = write_run(tmp_path, "a", run_json={"name": "a", "tracking_uri": uri,
                                             "experiment": "a", "parent_run_id": parent})
    base = write_csv(tmp_path, "class,mean\nheart,0.5\ntrachea,0\n", "nnunet 3d.csv")
    result = compare_run(run, base)
    assert result.mlflow_run_id == parent
    client = MlflowClient(tracking_uri=uri)
    metrics = client.get_run(parent).data.metrics
    prefix = "compare/best-test-vs-nnunet_3d"
    assert metrics[f"{prefix}/dice_change/heart"] == pytest.approx(0.395)
    assert metrics[f"{prefix}/dice_change_pct/heart"] == pytest.approx(79.0)
    assert metrics[f"{prefix}/dice_baseline/trachea"] == 0.0
    assert f"{prefix}/dice_change_pct/trachea" not in metrics  # undefined against 0
    assert f"{prefix}/dice_change/aorta" not in metrics  # the baseline has no aorta
    assert metrics[f"{prefix}/dice_change/mean"] == pytest.approx((0.895 - 0.5) / 2)
    files = {a.path for a in client.list_artifacts(parent, prefix)}
    assert files == {f"{prefix}/compare.md", f"{prefix}/compare.csv"}
    assert client.get_run(parent).info.status == "FINISHED"  # logging did not reopen it
    assert (tmp_path / "mlartifacts").is_dir()  # next to the store, not ./mlruns


def test_an_unreachable_store_only_warns(tmp_path, caplog):
    run = write_run(tmp_path, run_json={"name": "a", "tracking_uri": "sqlite:////nonexistent/"
                                        "dir/mlflow.db", "experiment": "a",
                                        "parent_run_id": "0" * 32})
    result = compare_run(run, write_csv(tmp_path, "class,mean\nheart,0.5\n"))
    assert result.mlflow_run_id is None
    assert (result.out_dir / "compare.csv").is_file()
    assert "unavailable" in caplog.text


def test_a_non_numeric_score_in_summary_json_names_its_key(tmp_path):
    run = write_run(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    summary["soups"]["greedy"]["test_dice_per_class"]["heart"] = "0.9"
    (run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(CompareError, match=r"summary.json: soups.greedy.test_dice_per_class."
                                           r"heart: expected a number or \{mean, std\}, got "
                                           r"'0.9'"):
        read_run(run, "greedy")
    assert read_run(run / ".").label == "a best (test)"
