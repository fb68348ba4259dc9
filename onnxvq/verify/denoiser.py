"""Compare a quantized denoiser with its FP32 original the way it is used: the same seeded DDIM
sampling loop run with each model.

Each loop runs on its own trajectory, so the quantization error accumulates over the steps
(Q-Diffusion's first challenge): the per-step SQNR compares ε_fp32(x_t^fp32) with
ε_quant(x_t^quant), and the final samples x_0 are compared by MSE and PSNR (data range [−1, 1],
so PSNR = 10·log10(2² / MSE)).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import onnx

from onnxvq.calibrate.denoiser import OnnxDenoiser, find_roles, initial_noise, sample_shape
from onnxvq.calibrate.diffusion import DDIMSampler, DDIMSchedule
from onnxvq.core.errors import CalibrationError
from onnxvq.core.metrics import sqnr


@dataclass(frozen=True)
class DenoiserComparison:
    steps: int
    samples: int
    timesteps: tuple[int, ...]
    step_sqnr_db: tuple[float, ...]  # noise prediction, per step in sampling order
    final_mse: float
    final_psnr_db: float

    def to_dict(self) -> dict:
        return asdict(self)


def _trajectory(model, roles, labels, sampler_args: dict, x_t: np.ndarray):
    eps_seen: list[np.ndarray] = []
    ts: list[int] = []
    sampler = DDIMSampler(OnnxDenoiser(model, roles, labels), **sampler_args)
    x0 = sampler.sample(x_t, lambda k, t, x, e: (eps_seen.append(e), ts.append(t)))
    return x0, eps_seen, ts


def compare_denoiser(fp32: onnx.ModelProto | str | os.PathLike,
                     quant: onnx.ModelProto | str | os.PathLike, *, steps: int = 20,
                     eta: float = 0.0, schedule: DDIMSchedule | None = None, samples: int = 8,
                     seed: int = 0, classes: int | None = None,
                     roles: Mapping[str, str] | None = None) -> DenoiserComparison:
    """Run the same DDIM loop (same x_T, labels and η noise) with both models and compare."""
    ref = fp32 if isinstance(fp32, onnx.ModelProto) else onnx.load(str(fp32))
    found = find_roles(ref, roles)
    labels = (np.random.default_rng(seed + 1).integers(0, classes, samples).astype(np.int64)
              if classes else None)
    x_t = initial_noise(sample_shape(ref, found), samples, seed + 100)
    args = {"steps": steps, "eta": eta, "schedule": schedule or DDIMSchedule(), "seed": seed}
    x_ref, eps_ref, ts = _trajectory(ref, found, labels, args, x_t)
    x_q, eps_q, _ = _trajectory(quant, found, labels, args, x_t)
    mse = float(((x_ref - x_q) ** 2).mean())
    psnr = float("inf") if mse == 0 else float(10 * np.log10(4.0 / mse))
    return DenoiserComparison(steps, samples, tuple(ts),
                              tuple(sqnr(a, b) for a, b in zip(eps_ref, eps_q, strict=True)),
                              mse, psnr)


def is_denoiser(model: onnx.ModelProto, sidecar: Mapping | None = None) -> bool:
    """Calibrated on a DDIM trajectory, or inputs that name a sample and a time step."""
    if (sidecar or {}).get("calibration", {}).get("source") == "ddim-trajectory":
        return True
    if len(model.graph.input) < 2:
        return False
    try:
        find_roles(model)
    except CalibrationError:
        return False
    return True


def compare_from_sidecar(fp32, quant, sidecar: Mapping, *, steps: int | None = None,
                         samples: int = 8, classes: int | None = None) -> DenoiserComparison:
    """`compare_denoiser` with the sampler settings the calibration recorded (DDIM steps, eta,
    schedule, class count) unless given."""
    cal = sidecar.get("calibration", {}) if sidecar else {}
    return compare_denoiser(
        fp32, quant, steps=steps or cal.get("ddim_steps", 20), eta=cal.get("eta", 0.0),
        schedule=DDIMSchedule(schedule=cal.get("schedule", "linear")), samples=samples,
        classes=classes if classes is not None else cal.get("classes"))
