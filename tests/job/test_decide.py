"""The promotion rule (locator/job/decide.py): closed-set accuracy and macro F1 on the test split, and the "not one
of our places" rule on the validation background photos; minimums for a first model. The rule on figures, then
decide.judge scoring real runs (servekit's tiny net, its unknown threshold set per test) on a dataset folder
written here."""
import json

import numpy as np
from PIL import Image
from servekit import PLACES, SIZE, make_run, place_photo

from locator.core import images
from locator.job import decide
from locator.runs import runs

GOOD = {"test_accuracy": 0.90, "macro_f1": 0.88}
NEVER, ALWAYS = 1.01, 0.0   # unknown thresholds: accept no photo (scores are at most 1), accept every photo


def figures(acc=0.90, f1=0.88, fa=None) -> dict:
    return {"test_accuracy": acc, "macro_f1": f1, decide.GATE: fa}


# ------------------------------------------------------------------------------------------------ the rule

def test_accuracy_and_macro_f1_within_the_tolerance_pass_and_beyond_it_fail():
    assert decide.decide(figures(0.895, 0.875), figures(), 0.01)[0]
    assert decide.decide(figures(0.95, 0.95), figures(), 0.0)[0]
    ok, why = decide.decide(figures(0.95, 0.86), figures(), 0.01)    # better accuracy, worse F1
    assert not ok and "macro_f1" in why and "test_accuracy" not in why
    assert not decide.decide(figures(0.88, 0.88), figures(), 0.01)[0]


def test_a_candidate_whose_unknown_rule_got_much_worse_is_refused_though_it_names_places_better():
    ok, why = decide.decide(figures(0.95, 0.95, fa=0.40), figures(fa=0.10), 0.01, gate_tolerance=0.05)
    assert not ok
    assert why.startswith("candidate worse than the current model: ")
    assert "accepts 40.0% of the validation background photos" in why and "the current model 10.0%" in why


def test_a_candidate_with_a_better_or_slightly_worse_unknown_rule_is_promoted_saying_both_figures():
    ok, why = decide.decide(figures(fa=0.08), figures(fa=0.12), 0.01, gate_tolerance=0.05)
    assert ok and "background false accept 8.0% vs 12.0%" in why
    assert decide.decide(figures(fa=0.16), figures(fa=0.12), 0.01, gate_tolerance=0.05)[0]  # within the tolerance


def test_when_one_model_lacks_a_background_figure_the_reason_says_so_and_the_rest_decides():
    ok, why = decide.decide(figures(fa=0.9), figures(fa=None), 0.01)
    assert ok and "not compared: the current model has no background false-accept figure" in why
    ok, why = decide.decide(figures(0.5, 0.5, fa=None), figures(fa=0.1), 0.01)
    assert not ok and "test_accuracy" in why
    ok, why = decide.decide(figures(), figures(), 0.01)
    assert ok and "not compared: no background photos in the validation split" in why


def test_a_first_model_below_the_minimums_is_refused_and_above_them_promoted():
    # three places, the commonest a third of the test split: the minimum is 1/3 + 0.25 * 2/3 = 0.5
    ok, why = decide.first_model(figures(0.45), 1 / 3, 0, "no current model yet", min_skill=0.25)
    assert not ok and why.startswith("no current model yet, and the candidate misses the first model's minimums")
    assert "test accuracy 0.4500 is below the minimum 0.5000" in why and "0.3333" in why
    ok, why = decide.first_model(figures(0.55), 1 / 3, 0, "no current model yet", min_skill=0.25)
    assert ok and "clears the first model's minimums" in why and "no background photos" in why
    # with background photos in the validation split, the unknown rule must exist and reject most of them
    ok, why = decide.first_model(figures(0.95, fa=0.6), 1 / 3, 40, "no current model yet", max_false_accept=0.5)
    assert not ok and "accepts 60.0% of the 40 validation background photos" in why
    ok, why = decide.first_model(figures(0.95, fa=None), 1 / 3, 40, "no current model yet")
    assert not ok and "no calibrated unknown rule" in why
    ok, why = decide.first_model(figures(0.95, fa=0.2), 1 / 3, 40, "no current model yet", max_false_accept=0.5)
    assert ok and "background false accept 20.0% <= 50%" in why


def test_chance_is_what_always_naming_the_commonest_place_scores():
    assert decide.chance([0, 0, 0, 1, 2, 2]) == 0.5
    assert decide.chance([]) == 0.0


# ------------------------------------------------------------------------------------------------ real runs

def write_dataset(folder, classes, wrong_labels=False):
    """The files decide.judge reads: the test split (servekit's photos of each place) and validation background
    photos (grey texture, none of the places)."""
    folder.mkdir(parents=True)
    rows = [(c, 5000 + 100 * c + i) for c in range(PLACES) for i in range(5)]
    x = np.stack([images.normalise(place_photo(c, s), size=SIZE) for c, s in rows])
    y = np.array([(c + 1) % PLACES if wrong_labels else c for c, _ in rows], np.int32)
    np.save(folder / "x_test.npy", x)
    np.save(folder / "y_test.npy", y)
    (folder / "files_test.txt").write_text("".join(f"raw/{c:02x}/{s}.jpg\n" for c, s in rows))
    (folder / "classes.json").write_text(json.dumps(classes))
    rng = np.random.default_rng(7)
    grey = [Image.fromarray(rng.integers(90, 160, (40, 50, 3), dtype=np.uint8)) for _ in range(8)]
    np.save(folder / "xneg_val.npy", np.stack([images.normalise(g, size=SIZE) for g in grey]))
    return folder


def test_judge_refuses_a_candidate_that_accepts_the_background_the_current_model_rejects(tmp_path):
    models = tmp_path / "models"
    cur, cand = make_run(models, threshold=NEVER), make_run(models, threshold=ALWAYS)  # the same net, two rules
    meta = runs.read_metadata(cur)
    folder = write_dataset(tmp_path / "dataset", meta["classes"])
    v = decide.judge(cand, cur, meta, folder, tolerance=0.01, gate_tolerance=0.05)
    assert (v.new[decide.GATE], v.old[decide.GATE]) == (1.0, 0.0)
    assert v.new["test_accuracy"] == v.old["test_accuracy"] and v.test_photos == 15 and v.background_photos == 8
    assert not v.promote and "accepts 100.0% of the validation background photos" in v.reason, v.reason
    # the other way round: the candidate's rule is the better one
    v = decide.judge(cur, cand, runs.read_metadata(cand), folder, tolerance=0.01, gate_tolerance=0.05)
    assert v.promote and "background false accept 0.0% vs 100.0%" in v.reason, v.reason


def test_judge_holds_a_first_model_to_the_minimums(tmp_path):
    models = tmp_path / "models"
    strict, lax = make_run(models, threshold=NEVER), make_run(models, threshold=ALWAYS)
    classes = runs.read_metadata(strict)["classes"]
    folder = write_dataset(tmp_path / "dataset", classes)
    v = decide.judge(strict, None, {}, folder)
    assert v.promote and v.old is None and "clears the first model's minimums" in v.reason, v.reason
    v = decide.judge(lax, None, {}, folder)
    assert not v.promote and "accepts 100.0% of the 8 validation background photos" in v.reason, v.reason
    wrong = write_dataset(tmp_path / "wrong", classes, wrong_labels=True)  # every test label names another place
    v = decide.judge(strict, None, {}, wrong)
    assert not v.promote and "test accuracy 0.0000 is below the minimum" in v.reason, v.reason


def test_judge_scores_models_of_different_input_sizes_on_the_same_test_photos(tmp_path):
    """A 96 px centre-crop model (the tiny net behind a resize, as an embedding model reads 224 px photos) and the
    dataset's 64x64 one are both scored on the test split's photos, each at its own size."""
    import keras

    from locator.core.fsio import atomic_write_json
    from locator.train import finish

    models = tmp_path / "models"
    small = make_run(models)
    meta = runs.read_metadata(small)
    folder = write_dataset(tmp_path / "data" / "dataset", meta["classes"])
    (folder / "xneg_val.npy").unlink()    # test photos only: the background rule is compared elsewhere
    for c in range(PLACES):          # the files behind the test rows, as the dataset names them
        for i in range(5):
            path = tmp_path / "data" / "raw" / f"{c:02x}" / f"{5000 + 100 * c + i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            place_photo(c, 5000 + 100 * c + i).save(path)
    net, _ = runs.load(small)
    inputs = keras.Input((96, 96, 3), dtype="uint8")
    resized = keras.layers.Resizing(SIZE, SIZE)(keras.layers.Rescaling(1.0)(inputs))
    big = runs.new_run(models)
    finish.save_model(keras.Model(inputs, net(resized)), big)
    atomic_write_json(big / "metadata.json", {**meta, "input_size": [96, 96], "resize_mode": "crop"})
    v = decide.judge(big, small, meta, folder)
    assert v.old is not None, v.reason           # not refused as "another image size"
    assert v.new["test_accuracy"] > 0.6 and v.old["test_accuracy"] > 0.6, (v.new, v.old)
    assert v.promote, v.reason
