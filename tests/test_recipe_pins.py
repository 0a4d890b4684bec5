"""The paper's training recipe as the trainer really hands it to the matcher, the encoder and the loss.

Section 2.2 of the SSD paper: a default box is positive for the ground truth it overlaps best (bipartite)
and for any ground truth with jaccard overlap above 0.5; hard negatives are kept at most 3:1 to positives;
the localisation term is weighted by alpha = 1; offsets are encoded with the variances 0.1 (centre) and 0.2
(size) of the authors' Caffe code. Section 3: SGD with 0.9 momentum and 0.0005 weight decay. A one-line
change to a default (train.DEFAULTS, recipe.make_optimizer, Trainer._setup, train_step's forwarding)
would pass every unit test of the pieces, so this test runs one real iteration of the command with its
defaults and records what each piece received.
"""
import numpy as np

from minissd import train
from minissd.loss import MultiBoxLoss
from minissd.model import ssd as ssd_mod
from minissd.optim import SGD

TINY = ["--train-limit", "2", "--batch-size", "2", "--val-dataset", "none", "--test-dataset", "none",
        "--eval-every", "0", "--iterations", "1", "--warmup", "0", "--log-every", "1", "--progress", "none",
        "--max-minutes", "0"]


def test_trainer_hands_the_paper_recipe_to_matcher_encoder_loss_and_optimizer(tmp_path, monkeypatch):
    seen = {"match": [], "encode": [], "loss": [], "sgd": []}
    real_match, real_encode = ssd_mod.match_batch, ssd_mod.encode
    real_forward, real_step = MultiBoxLoss.forward, SGD.step

    def match_spy(*args, **kwargs):
        seen["match"].append((kwargs["threshold"], kwargs["strategy"]))
        return real_match(*args, **kwargs)

    def encode_spy(matched, priors, variances, *args, **kwargs):
        seen["encode"].append(tuple(float(v) for v in variances))
        return real_encode(matched, priors, variances, *args, **kwargs)

    def forward_spy(self, *args, **kwargs):
        seen["loss"].append((self.neg_pos_ratio, self.alpha, self.min_negatives))
        return real_forward(self, *args, **kwargs)

    def step_spy(self):
        seen["sgd"].append((self.momentum, self.weight_decay,
                            sorted({self.multipliers(n) for n, _, _ in self.model.named_parameters()})))
        return real_step(self)

    monkeypatch.setattr(ssd_mod, "match_batch", match_spy)
    monkeypatch.setattr(ssd_mod, "encode", encode_spy)
    monkeypatch.setattr(MultiBoxLoss, "forward", forward_spy)
    monkeypatch.setattr(SGD, "step", step_spy)

    assert train.main([*TINY, "--out", str(tmp_path / "run")]) == 0

    assert seen["match"] == [(0.5, "bipartite")]          # best prior per object + IoU > 0.5
    assert seen["encode"] == [(0.1, 0.2)]                  # centre / size variances
    assert seen["loss"] == [(3.0, 1.0, 0)]                 # 3:1 negatives, alpha 1, no negatives floor
    # momentum 0.9, decay 5e-4; Caffe's groups: weights (lr x1, decay x1), biases (lr x2, no decay)
    assert seen["sgd"] == [(0.9, 5e-4, [(1.0, 1.0), (2.0, 0.0)])]


def test_recipe_options_reach_the_pieces(tmp_path, monkeypatch):
    """The options are not ignored: non-default values arrive where the defaults did."""
    seen = []
    real_match = ssd_mod.match_batch
    real_forward = MultiBoxLoss.forward

    def match_spy(*args, **kwargs):
        seen.append(("match", kwargs["threshold"], kwargs["strategy"]))
        return real_match(*args, **kwargs)

    def forward_spy(self, *args, **kwargs):
        seen.append(("loss", self.neg_pos_ratio))
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(ssd_mod, "match_batch", match_spy)
    monkeypatch.setattr(MultiBoxLoss, "forward", forward_spy)
    code = train.main([*TINY, "--out", str(tmp_path / "run"), "--match-threshold", "0.4", "--match", "best_prior",
                       "--neg-pos-ratio", "2"])
    assert code == 0
    assert seen == [("match", 0.4, "best_prior"), ("loss", 2.0)]
    assert np.isclose(train.DEFAULTS["match_threshold"], 0.5) and train.DEFAULTS["neg_pos_ratio"] == 3.0
