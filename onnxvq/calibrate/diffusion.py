"""A DDIM sampler over an ONNX denoiser, and Q-Diffusion's time-step-aware calibration data.

A denoiser takes a noisy sample x_t [N, C, H, W], a time step t (int or float, shape [N] or
scalar) and optionally a class label [N], and predicts the noise ε (models that also predict a
variance, as DiT, return 2C channels: the first C are ε). DDIM (Song et al. 2021), with the
defaults of diffusers' `DDIMScheduler`: 1000 training steps, linear β from 1e-4 to 0.02,
"leading" spacing (t_k = k·⌊1000/S⌋ for k = S−1..0), x̂_0 clipped to [−1, 1], ᾱ_{−1} = 1, η = 0:

    x̂_0    = (x_t − √(1−ᾱ_t)·ε) / √ᾱ_t
    σ_t    = η·√((1−ᾱ_prev)/(1−ᾱ_t)·(1−ᾱ_t/ᾱ_prev))
    x_prev = √ᾱ_prev·x̂_0 + √(1−ᾱ_prev−σ_t²)·ε + σ_t·z,   z ~ N(0, I) (seeded)

Q-Diffusion (seed 002): activations change with t, so calibration inputs are taken along the
whole trajectory: with interval c, the model inputs at every step k (k = 1..S in sampling order)
with k % c == 0 are kept, `per_step` samples each. c = S keeps only the last step (the one-step
baseline). The kept inputs are held in memory (count × sample size) so observers can take several
passes over them (PTS does).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from onnxvq.core.errors import CalibrationError

SCHEDULES = ("linear", "scaled_linear", "cosine")


@dataclass(frozen=True)
class DDIMSchedule:
    """The noise schedule; `cosine` is diffusers' "squaredcos_cap_v2" (Nichol & Dhariwal)."""

    train_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    schedule: Literal["linear", "scaled_linear", "cosine"] = "linear"
    clip_sample: bool = True
    set_alpha_to_one: bool = True

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise CalibrationError(f"unknown beta schedule {self.schedule!r}; choose one of "
                                   f"{', '.join(SCHEDULES)}")

    def betas(self) -> np.ndarray:
        n = self.train_steps
        if self.schedule == "linear":
            return np.linspace(self.beta_start, self.beta_end, n, dtype=np.float64)
        if self.schedule == "scaled_linear":
            return np.linspace(self.beta_start**0.5, self.beta_end**0.5, n) ** 2

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999)
                         for i in range(n)])

    def alphas_cumprod(self) -> np.ndarray:
        return np.cumprod(1.0 - self.betas())

    def timesteps(self, steps: int) -> np.ndarray:
        if not 1 <= steps <= self.train_steps:
            raise CalibrationError(f"DDIM steps must be in 1..{self.train_steps}, got {steps}")
        return (np.arange(steps) * (self.train_steps // steps))[::-1].astype(np.int64)


def ddim_step(x: np.ndarray, eps: np.ndarray, t: int, t_prev: int, alphas_cumprod: np.ndarray,
              schedule: DDIMSchedule, eta: float = 0.0,
              noise: np.ndarray | None = None) -> np.ndarray:
    """One DDIM update x_t -> x_{t_prev} (t_prev < 0: the final step), in float64."""
    a_t = alphas_cumprod[t]
    final = 1.0 if schedule.set_alpha_to_one else alphas_cumprod[0]
    a_prev = alphas_cumprod[t_prev] if t_prev >= 0 else final
    x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
    if schedule.clip_sample:
        x0 = np.clip(x0, -1.0, 1.0)
    sigma = eta * np.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    out = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - sigma**2) * eps
    if eta > 0:
        out = out + sigma * noise
    return out


Denoise = Callable[[np.ndarray, int], np.ndarray]  # (x_t float32, t) -> ε


@dataclass
class DDIMSampler:
    """`sample(x_T)` runs `steps` DDIM updates with `denoise`; `on_step(k, t, x_t, eps)` sees
    every step (k = 1..steps in sampling order) before its update."""

    denoise: Denoise
    steps: int = 20
    eta: float = 0.0
    schedule: DDIMSchedule = field(default_factory=DDIMSchedule)
    seed: int = 0  # of the η > 0 noise

    def sample(self, x_t: np.ndarray,
               on_step: Callable[[int, int, np.ndarray, np.ndarray], None] | None = None,
               ) -> np.ndarray:
        acp = self.schedule.alphas_cumprod()
        ts = self.schedule.timesteps(self.steps)
        ratio = self.schedule.train_steps // self.steps
        rng = np.random.default_rng(self.seed)
        x = np.asarray(x_t, dtype=np.float64)
        for k, t in enumerate(ts, start=1):
            eps = np.asarray(self.denoise(x.astype(np.float32), int(t)), dtype=np.float64)
            if eps.shape[1] == 2 * x.shape[1]:  # learned variance (DiT): keep the ε half
                eps = eps[:, : x.shape[1]]
            if on_step is not None:
                on_step(k, int(t), x, eps)
            noise = rng.standard_normal(x.shape) if self.eta > 0 else None
            x = ddim_step(x, eps, int(t), int(t) - ratio, acp, self.schedule, self.eta, noise)
        return x
