from __future__ import annotations

import csv
import io
import json
import math

import pytest

from search.cli import main
from search.compare import (
    CompareError,
    Stat,
    compare,
    compare_run,
    load_scores,
    nnunet_keys,
    read_csv,
    read_nnunet,
    read_run,
    to_csv,
    to_markdown,
)

# The layout search.api.run_search + search.soup.finish write.
BEST = {"esophagus": 0.0, "heart": 0.895, "trachea": 0.0, "aorta": 0.603}
GREEDY = {"esophagus": 0.1, "heart": 0.9, "trachea": 0.05, "aorta": 0.7}
UNIFORM = {"esophagus": 0.0, "heart": 0.781, "trachea": 0.0, "aorta": 0.318}
VAL = {"esophagus": 0.02, "heart": 0.888, "trachea": 0.0, "aorta": 0.625}


def soup(test, ingredients):
    return {"ingredients": ingredients, "val_dice": 0.3, "val_dice_per_class": VAL,
            "test_dice": sum(test.values()) / 4, "test_dice_per_class": test,
            "weights": "soup/x/checkpoint.pt"}


def write_run(root, name="a", best=True, soups=True, run_json=None):
    run = root / name
    run.mkdir(parents=True)
    summary = {"name": name, "metric": "val_dice", "run_dir": str(run), "trials": [
        {"trial_id": "e541505d", "status": "completed", "epochs": 16, "val_dice": 0.378,
         "val_dice_per_class": VAL, "config": {"optimizer.lr": 0.0991},
         "checkpoint": "trial_e541505d/checkpoint_000015/checkpoint.pt"}],
        "best": None, "soups": None}
    if best:
        summary["best"] = {"trial_id": "e541505d", "config": {"optimizer.lr": 0.0991},
                           "val_dice": 0.378, "val_dice_per_class": VAL, "test_dice": 0.3745,
                           "test_dice_per_class": BEST,
                           "checkpoint": "trial_e541505d/checkpoint_000015/checkpoint.pt"}
    if soups:
        summary["soups"] = {"uniform": soup(UNIFORM, ["e541505d", "05f4e537"]),
                            "greedy": {**soup(GREEDY, ["e541505d"]), "steps": []}}
    (run / "summary.json").write_text(json.dumps(summary, indent=2))
    if run_json is not None:
        (run / "run.json").write_text(json.dumps(run_json, indent=2))
    return run


def case(dice, hd95):
    return {"Dice": dice, "IoU": dice / (2 - dice) if dice == dice else dice, "TP": 10,
            "FP": 1, "FN": 1, "n_pred": 11, "n_ref": 11, "HD95": hd95}


def nnunet_summary(keys=("esophagus", "heart", "trachea", "aorta")):
    """nnU-Net's summary.json: per-case metrics, per-label means, the foreground mean."""
    means = dict(zip(keys, [case(0.79, 3.5), case(0.945, 4.0), case(0.9, 2.0),
                            case(0.92, float("nan"))], strict=True))
    return {"metric_per_case": [{"reference_file": "gt/Patient_41.nii.gz",
                                 "prediction_file": "pred/Patient_41.nii.gz",
                                 "metrics": means}],
            "mean": means, "foreground_mean": case(0.889, 3.2)}


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))  # NaN is written as NaN, as nnU-Net does
    return path


def write_csv(tmp_path, text, name="baseline.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


# -- reading ----------------------------------------------------------------------------------
def test_run_folder_scores_of_each_model_and_split(tmp_path):
    run = write_run(tmp_path)
    assert read_run(run).metrics == {"dice": {k: Stat(v) for k, v in BEST.items()}}
    assert read_run(run, "greedy").metrics["dice"]["aorta"] == Stat(0.7)
    assert read_run(run, "uniform").metrics["dice"]["heart"] == Stat(0.781)
    assert read_run(run, "best", "val").metrics["dice"]["esophagus"] == Stat(0.02)
    assert read_run(run, "greedy").label == "a greedy (test)"


def test_run_folder_prefers_its_nnunet_style_eval_summary(tmp_path):
    run = write_run(tmp_path)
    write_json(run / "eval" / "greedy-test" / "summary.json", nnunet_summary())
    scores = read_run(run, "greedy")
    assert scores.metrics["dice"]["heart"] == Stat(0.945)
    assert scores.metrics["hd95"]["trachea"] == Stat(2.0)
    assert read_run(run, "best").metrics["dice"]["heart"] == Stat(0.895)  # no eval: summary


def test_nnunet_summary_numeric_labels_nan_and_mean_std(tmp_path):
    data = nnunet_summary(keys=("1", "2", "3", "(2, 4)"))
    data["mean"]["1"]["Dice"] = float("nan")  # a class absent from every case
    data["mean"]["2"]["Dice"] = {"mean": 0.94, "std": 0.01}  # over folds or seeds
    data["std"] = {"3": {"Dice": 0.03}}
    path = write_json(tmp_path / "fold_0" / "summary.json", data)
    names = nnunet_keys({"esophagus": (1,), "heart": (2,), "trachea": (3,)})
    scores = read_nnunet(path, names)
    dice = scores.metrics["dice"]
    assert dice == {"esophagus": None, "heart": Stat(0.94, 0.01), "trachea": Stat(0.9, 0.03),
                    "(2, 4)": Stat(0.92)}
    assert scores.metrics["hd95"]["(2, 4)"] is None
    assert scores.slug == "fold_0"  # summary.json is named by its folder
    # Without the run's names the keys stay as nnU-Net wrote them: no dataset is assumed.
    assert set(read_nnunet(path).metrics["dice"]) == {"1", "2", "3", "(2, 4)"}


def test_nnunet_keys_name_labels_and_multi_label_regions_of_any_dataset():
    brats = {"whole tumor": (1, 2, 3), "tumor core": (1, 3), "enhancing tumor": (3,)}
    assert nnunet_keys(brats) == {"(1, 2, 3)": "whole tumor", "(1, 3)": "tumor core",
                                  "3": "enhancing tumor"}


def test_csv_baseline_with_optional_columns(tmp_path):
    path = write_csv(tmp_path, "\ufeffClass, Mean ,std,metric\n# from the paper\n"
                               "esophagus,0.79,0.05,dice\nHeart,0.945,,\n\n"
                               "heart,4.5,1.5,HD95\n")
    assert read_csv(path).metrics == {"dice": {"esophagus": Stat(0.79, 0.05),
                                               "heart": Stat(0.945)},
                                      "hd95": {"heart": Stat(4.5, 1.5)}}
    other = write_csv(tmp_path, "mean,class\n0.9,trachea\n", "b.csv")
    assert read_csv(other).metrics == {"dice": {"trachea": Stat(0.9)}}


@pytest.mark.parametrize("text, message", [
    ("", "b.csv: empty (expected the header class,mean[,std][,metric])"),
    ("klass,mean\nheart,0.9\n", "b.csv, line 1: unknown column 'klass'"),
    ("class,std\nheart,0.1\n", "b.csv, line 1: no 'mean' column"),
    ("class,mean,mean\nheart,0.9,0.9\n", "b.csv, line 1: a column is named twice"),
    ("class,mean\n", "b.csv: no rows after the header"),
    ("class,mean\nheart,0.9\naorta,high\n", "b.csv, line 3, column 'mean': 'high' is not a "
                                            "number"),
    ("class,mean,std\nheart,0.9,nan\n", "b.csv, line 2, column 'std': 'nan' is not a number"),
    ("class,mean\nheart,\n", "b.csv, line 2, column 'mean': '' is not a number"),
    ("class,mean,metric\nheart,0.9,iou\n", "line 2, column 'metric': 'iou' is not one of "
                                           "dice, hd95"),
    ("class,mean\nheart,0.9\n\nheart,0.8\n", "b.csv, line 4: class 'heart' (dice) given "
                                             "twice (first on line 2)"),
    ("class,mean\nheart,94.5\n", "line 2, column 'mean': Dice 94.5 is outside [0, 1] "
                                 "(write 0.79 for 79%)"),
    ("class,mean,std\nheart,0.9,-0.1\n", "line 2, column 'std': -0.1 is negative"),
    ("class,mean\nheart,0.9,0.1\n", "b.csv, line 2: 3 cells, the header has 2"),
    ("class,mean\nmean,0.9\n", "line 2, column 'class': 'mean' is not a class name"),
])
def test_csv_errors_name_file_line_and_column(tmp_path, text, message):
    with pytest.raises(CompareError) as err:
        read_csv(write_csv(tmp_path, text, "b.csv"))
    assert message in str(err.value)


def test_non_utf8_csv(tmp_path):
    path = tmp_path / "b.csv"
    path.write_bytes(b"class,mean\nh\xe9art,0.9\n")
    with pytest.raises(CompareError, match=r"b.csv: not a UTF-8 text file"):
        read_csv(path)


@pytest.mark.parametrize("content, message", [
    ("{not json", "x.json: not valid JSON (line 1: "),
    ('{"foreground_mean": {"Dice": 0.9}}', "x.json: not an nnU-Net summary (no per-class "
                                           "'mean' section)"),
    ('{"mean": {"1": {"Dice": "high"}}}', "x.json: mean.1.Dice: expected a number or "
                                          "{mean, std}, got 'high'"),
    ('{"mean": {"1": {"IoU": 0.8}}}', "x.json: no Dice or HD95 in its 'mean' section"),
    ('{"mean": {"1": 0.8}}', "x.json: mean.1: expected {metric: value}, got 0.8"),
])
def test_nnunet_summary_errors(tmp_path, content, message):
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(CompareError) as err:
        read_nnunet(path)
    assert message in str(err.value)


def test_run_folder_errors(tmp_path):
    with pytest.raises(CompareError, match=r"nope: no such run folder"):
        read_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompareError, match=r"empty: no results \(neither "
                                           r"eval/best-test/summary.json nor summary.json"):
        read_run(tmp_path / "empty")
    unfinished = write_run(tmp_path, "unfinished", best=False, soups=False)
    with pytest.raises(CompareError, match=r"no test scores for the best trial \(the run ended "
                                           r"before its test evaluation; finish it with: "
                                           r"python -m search soup .*unfinished\)"):
        read_run(unfinished)
    unsouped = write_run(tmp_path, "unsouped", soups=False)
    with pytest.raises(CompareError, match=r"no test scores for the greedy soup"):
        read_run(unsouped, "greedy")
    with pytest.raises(CompareError, match=r"holds the test and val splits only, not 'train'"):
        read_run(unsouped, "best", "train")
    with pytest.raises(CompareError, match=r"--model 'worst': expected one of best, greedy"):
        read_run(unsouped, "worst")
    with pytest.raises(CompareError, match=r"b.txt: expected a run folder, an nnU-Net"):
        load_scores(write_csv(tmp_path, "x", "b.txt"))
    with pytest.raises(CompareError, match=r"b.csv: no such file or folder"):
        load_scores(tmp_path / "b.csv")


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
