"""PTS: per-channel power-of-two shifts recover planted scales and equal brute force."""

from __future__ import annotations

import numpy as np
import pytest

from onnxvq.calibrate import (
    PerChannelMinMax,
    PtsErrorObserver,
    PtsObserver,
    fake_quant,
    pts_candidate_scales,
    pts_layer_qparams,
)


def _planted(rng, factors, rows=4000):
    """[batches of [rows, 197, C]] with channel c uniform in [-f_c, 1.5 f_c] (zero inside)."""
    u = rng.uniform(-1.0, 1.5, (rows, len(factors)))
    return [b.reshape(-1, 10, len(factors)) for b in np.array_split(u * factors, 4)]


def _brute(batches, scale, zp, levels=4):
    x = np.concatenate([b.reshape(-1, b.shape[-1]) for b in batches])
    err = np.stack([((x - fake_quant(x, s, zp, 0, 255)) ** 2).sum(0)
                    for s in pts_candidate_scales(scale, levels)], axis=1)
    return err


def _two_pass(batches):
    mm = PerChannelMinMax("ln", axis=-1)
    for b in batches:
        mm.update(b)
    scale, zp = pts_layer_qparams(*mm.tensor_range())
    obs = PtsErrorObserver("ln", scale, zp, axis=-1)
    for b in batches:
        obs.update(b)
    return obs, scale, zp


def test_candidate_scales():
    assert list(pts_candidate_scales(8.0)) == [1.0, 2.0, 4.0, 8.0]


def test_two_pass_recovers_planted_power_of_two_scales():
    batches = _planted(np.random.default_rng(0), np.array([1.0, 2.0, 4.0, 8.0, 8.0, 1.0]))
    obs, scale, zp = _two_pass(batches)
    assert list(obs.alphas()) == [0, 1, 2, 3, 3, 0]
    assert obs.params()[:2] == (scale, zp)
    np.testing.assert_allclose(obs.errors, _brute(batches, scale, zp), rtol=1e-12)


def test_two_pass_equals_brute_force_on_unplanted_channels():
    rng = np.random.default_rng(1)
    factors = np.exp(rng.uniform(np.log(0.05), np.log(10.0), 32))
    batches = [rng.standard_normal((3, 50, 32)) * factors for _ in range(3)]
    obs, scale, zp = _two_pass(batches)
    brute = _brute(batches, scale, zp)
    assert (obs.alphas() == brute.argmin(1)).all()
    assert len(set(obs.alphas())) >= 3  # the data exercises several shifts


def test_channel_axis_other_than_last():
    batches = _planted(np.random.default_rng(2), np.array([1.0, 2.0, 4.0, 8.0]))
    moved = [np.moveaxis(b, -1, 1) for b in batches]  # [B, C, T]
    mm = PerChannelMinMax("ln", axis=1)
    for b in moved:
        mm.update(b)
    scale, zp = pts_layer_qparams(*mm.tensor_range())
    obs = PtsErrorObserver("ln", scale, zp, axis=1)
    for b in moved:
        obs.update(b)
    assert list(obs.alphas()) == [0, 1, 2, 3]


def test_one_pass_histogram_matches_exact_shifts():
    rng = np.random.default_rng(3)
    factors = np.array([1.0, 2.0, 4.0, 8.0] * 4) * rng.uniform(0.7, 1.0, 16)
    batches = [rng.standard_normal((4, 197, 16)) * factors for _ in range(5)]
    one = PtsObserver("ln")
    for b in batches:
        one.update(b)
    two, scale, zp = _two_pass(batches)
    assert one.layer_qparams() == (scale, zp)
    assert (one.alphas() == two.alphas()).all()
    # per-channel error estimates within a few % of the exact ones for the chosen shift
    exact = two.errors[np.arange(16), two.alphas()]
    approx = one.candidate_errors()[np.arange(16), two.alphas()]
    np.testing.assert_allclose(approx, exact, rtol=0.05)
    assert one.hist.counts.shape == (16, 2048)
    assert one.params()[2].tolist() == two.alphas().tolist()


def test_pts_rejects_nan():
    obs = PtsErrorObserver("blk.ln_in", 0.1, 10)
    with pytest.raises(Exception, match="blk.ln_in"):
        obs.update(np.array([[1.0, np.nan]]))
