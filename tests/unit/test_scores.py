"""`search.scores`: a run folder's scores (its eval summaries first, else summary.json), an
nnU-Net summary.json, a hand-written CSV baseline, each read into one `Scores` table, and
every bad input as one line naming the file (and line and column). The builders of run
folders and summaries here are shared with tests/unit/test_compare.py."""

from __future__ import annotations

import json

import pytest

from search.errors import ArgumentError, CompareError
from search.scores import Stat, load_scores, nnunet_keys, read_csv, read_nnunet, read_run

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
    with pytest.raises(ArgumentError, match=r"--model worst: not one of best, greedy, uniform "
                                            r"and no checkpoint file there$"):
        read_run(unsouped, "worst")
    with pytest.raises(CompareError, match=r"b.txt: expected a run folder, an nnU-Net"):
        load_scores(write_csv(tmp_path, "x", "b.txt"))
    with pytest.raises(CompareError, match=r"b.csv: no such file or folder"):
        load_scores(tmp_path / "b.csv")
