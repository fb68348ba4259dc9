"""The DDIM sampler and Q-Diffusion's time-step-aware calibration."""

from __future__ import annotations

import numpy as np
import pytest

from onnxvq.calibrate.denoiser import (
    DenoiserRoles,
    OnnxDenoiser,
    TrajectoryCalibration,
    find_roles,
    initial_noise,
)
from onnxvq.calibrate.diffusion import DDIMSampler, DDIMSchedule
from onnxvq.core.errors import CalibrationError
from onnxvq.models.tiny_denoiser import build_tiny_denoiser


def _toy_eps(x: np.ndarray, t: int) -> np.ndarray:
    return 0.3 * x + t / 1000.0


def test_three_step_ddim_matches_the_hand_computed_trajectory():
    x = np.array([[0.5, -1.2], [2.0, 0.1]])
    betas = np.linspace(1e-4, 0.02, 1000)
    acp = np.cumprod(1.0 - betas)
    # leading spacing: ratio 1000 // 3 = 333, t = 666, 333, 0; the last step goes to ᾱ = 1
    expected, y = [], x.copy()
    for t, prev in ((666, 333), (333, 0), (0, None)):
        a_t, a_prev = acp[t], (acp[prev] if prev is not None else 1.0)
        eps = _toy_eps(y.astype(np.float32), t).astype(np.float64)  # the model runs in float32
        x0 = np.clip((y - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t), -1, 1)
        y = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps
        expected.append(y)
    seen = []
    got = DDIMSampler(_toy_eps, steps=3).sample(x, lambda k, t, xt, e: seen.append((k, t)))
    assert seen == [(1, 666), (2, 333), (3, 0)]
    np.testing.assert_array_equal(got, expected[-1])


def test_eta_adds_the_seeded_noise_term():
    x = np.random.default_rng(0).standard_normal((2, 3))
    det = DDIMSampler(_toy_eps, steps=4).sample(x)
    a = DDIMSampler(_toy_eps, steps=4, eta=1.0, seed=5).sample(x)
    b = DDIMSampler(_toy_eps, steps=4, eta=1.0, seed=5).sample(x)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - det).max() > 1e-3


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "cosine"])
def test_schedules_decrease_from_one(schedule):
    acp = DDIMSchedule(schedule=schedule).alphas_cumprod()
    assert 0.99 < acp[0] < 1 and acp[-1] < 0.01 and np.all(np.diff(acp) < 0)


def test_unknown_schedule_and_bad_interval_are_refused():
    with pytest.raises(CalibrationError, match="unknown beta schedule"):
        DDIMSchedule(schedule="sigmoid")
    with pytest.raises(CalibrationError, match="--calib-steps must be in 1..20"):
        TrajectoryCalibration(interval=21)


def test_roles_found_from_names_and_given():
    model = build_tiny_denoiser()
    assert find_roles(model) == DenoiserRoles("sample", "timestep", "class_labels")
    with pytest.raises(CalibrationError, match="no such role or input"):
        find_roles(model, {"sample": "nope"})


def test_calibration_is_collected_at_every_cth_step():
    model = build_tiny_denoiser()
    calib = TrajectoryCalibration(interval=5, per_step=6, steps=20, classes=4)
    feeds = calib.feeds(model, batch_size=4)
    # steps k = 5, 10, 15, 20 of 20 (t = 950, 900, ..., 0), 6 samples each, in batches of 4 + 2
    assert calib.collected == [(5, 750), (10, 500), (15, 250), (20, 0)]
    assert len(calib) == 24 and sum(len(f["sample"]) for f in feeds) == 24
    assert [int(f["timestep"][0]) for f in feeds] == [750, 750, 500, 500, 250, 250, 0, 0]
    # the kept samples are the FP32 trajectory's x_t at those steps
    labels = np.concatenate([f["class_labels"] for f in feeds[:2]])
    trajectory = {}
    DDIMSampler(OnnxDenoiser(model, find_roles(model), labels), steps=20).sample(
        initial_noise((2, 4, 4), 6, 0), lambda k, t, x, e: trajectory.setdefault(k, x))
    kept = np.concatenate([f["sample"] for f in feeds[2:4]])
    np.testing.assert_array_equal(kept, trajectory[10].astype(np.float32))
    assert calib.record()["collected_steps"] == [5, 10, 15, 20]


def test_one_step_calibration_keeps_only_the_last_step():
    calib = TrajectoryCalibration(interval=20, per_step=3, steps=20, classes=4)
    calib.feeds(build_tiny_denoiser(), batch_size=8)
    assert calib.collected == [(20, 0)]


def test_class_input_needs_the_class_count():
    with pytest.raises(CalibrationError, match="--classes N"):
        TrajectoryCalibration(interval=5).feeds(build_tiny_denoiser(), 4)


def test_quantize_a_denoiser_on_its_trajectory():
    from onnxvq.core.config import QuantConfig
    from onnxvq.quantizer.run import quantize

    model = build_tiny_denoiser()
    cfg = QuantConfig(batch_size=8)
    every = quantize(model, TrajectoryCalibration(interval=1, per_step=8, classes=4), cfg)
    last = quantize(model, TrajectoryCalibration(interval=20, per_step=8, classes=4), cfg)
    assert every.calibration["collected_steps"] == list(range(1, 21))
    assert every.calibration["samples"] == 160 and last.calibration["timesteps"] == [0]
    # the sample input spans x_T ~ N(0, 1) (kept at step 1), only ~[-1, 1] at the last step
    lo_all, hi_all = every.activation_qparams["sample"].range
    lo_one, hi_one = last.activation_qparams["sample"].range
    assert hi_all - lo_all > 4 > hi_one - lo_one
