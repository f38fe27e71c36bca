"""train/finish.calibrate_unknown picks the "unknown" score on validation: the target true accept first, then the
fewest background photos accepted; if no score reaches the target, the one that accepts the most of our photos."""
import numpy as np

from locator.train import finish, fit


class Fixed:
    """A 'network' that answers fixed probabilities per input row (the row's first pixel is its id)."""

    def __init__(self, table):
        self.table = table

    def predict(self, x, batch_size=None, verbose=0):
        return self.table[np.asarray(x)[:, 0, 0, 0].astype(int)]


def data_and_net(place_rows, background_rows):
    probs = np.asarray(place_rows + background_rows, np.float32)
    ids = np.arange(len(probs), dtype=np.uint8)
    x = np.zeros((len(probs), 2, 2, 3), np.uint8)
    x[:, 0, 0, 0] = ids
    n_p = len(place_rows)
    xs = {s: x[:n_p] for s in ("train", "val", "test")}
    ys = {s: np.zeros(n_p, np.int32) for s in xs}
    neg = {s: x[n_p:] for s in xs}
    kinds = {s: np.array(["landmark"] * len(background_rows)) for s in xs}
    classes = [{"class": 0, "index": "00", "name": "A"}, {"class": 1, "index": "01", "name": "B"}]
    return fit.Data(xs, ys, {s: [""] * n_p for s in xs}, classes, "f", "squash", neg, kinds), Fixed(probs)


def test_the_score_with_fewer_false_accepts_at_the_target_wins():
    # background photos: p_bg 0.45 does not beat the best place (0.5, as sure as on our photos), but 1 - p_bg = 0.55
    # is under every place photo's 0.9: not_background rejects them, max_softmax+background does not
    places = [[0.5, 0.4, 0.1]] * 10
    background = [[0.5, 0.05, 0.45]] * 10
    data, net = data_and_net(places, background)
    out = finish.calibrate_unknown(net, data, fit.Settings(), 0.9)
    assert out["score"] == "not_background" and out["true_accept"] == 1.0
    assert out["val_landmark_false_accept"] == 0.0
    assert out["compared"]["max_softmax+background"]["val_false_accept"] == 1.0


def test_without_a_score_at_the_target_the_highest_true_accept_is_kept():
    # the background output wins on 3 of 10 place photos: no background score reaches 90%; both give 70%
    places = [[0.8, 0.1, 0.1]] * 7 + [[0.3, 0.1, 0.6]] * 3
    background = [[0.1, 0.1, 0.8]] * 10
    data, net = data_and_net(places, background)
    out = finish.calibrate_unknown(net, data, fit.Settings(), 0.9)
    assert out["true_accept"] == 0.7 and out["val_negatives_false_accept"] == 0.0
