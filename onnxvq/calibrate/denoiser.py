"""An ONNX denoiser as the DDIM sampler calls it, and time-step-aware calibration feeds.

Input roles (noisy sample, time step, optional class label) are found from the graph inputs'
names and shapes, or given: the sample is the input named like sample/latent/x/hidden_states, else
the only 4-D float input; the time step the one named like time/t; the class label the one named
like class/label/y; with three inputs, whatever remains. Anything else is a one-line error
naming the inputs and the flag that settles it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxvq.calibrate.diffusion import DDIMSampler, DDIMSchedule
from onnxvq.core.errors import CalibrationError

_PATTERNS = {"sample": r"sample|latent|noisy|hidden_states|^x$|^x_t$",
             "timestep": r"time|^t$|^ts$", "class_label": r"class|label|^y$"}


@dataclass(frozen=True)
class DenoiserRoles:
    sample: str
    timestep: str
    class_label: str | None = None


def _inputs(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return {i.name: i for i in model.graph.input if i.name not in inits}


def find_roles(model: onnx.ModelProto, given: Mapping[str, str] | None = None) -> DenoiserRoles:
    """The denoiser's input roles; `given` maps role ("sample", "timestep", "class_label") to an
    input name and wins over the guess."""
    inputs = _inputs(model)
    roles = dict(given or {})
    for role, name in roles.items():
        if role not in _PATTERNS or name not in inputs:
            raise CalibrationError(f"denoiser role {role}={name!r}: no such role or input "
                                   f"(inputs: {', '.join(inputs)})")
    for role, pattern in _PATTERNS.items():
        if role not in roles:
            found = [n for n in inputs if re.search(pattern, n, re.I) and n not in roles.values()]
            if len(found) == 1:
                roles[role] = found[0]
    if "sample" not in roles:
        four_d = [n for n, v in inputs.items() if len(v.type.tensor_type.shape.dim) == 4]
        if len(four_d) == 1:
            roles["sample"] = four_d[0]
    rest = [n for n in inputs if n not in roles.values()]
    if "timestep" not in roles and len(rest) == 1 and len(inputs) == 2:
        roles["timestep"] = rest.pop()
    if "class_label" not in roles and len(rest) == 1 and len(inputs) == 3:
        roles["class_label"] = rest.pop()
    rest = [n for n in inputs if n not in roles.values()]
    if "sample" not in roles or "timestep" not in roles or rest:
        raise CalibrationError(f"cannot tell the denoiser's inputs apart ({', '.join(inputs)}); "
                               "name them with --denoiser-inputs sample=NAME,timestep=NAME"
                               "[,class_label=NAME]")
    return DenoiserRoles(roles["sample"], roles["timestep"], roles.get("class_label"))


class OnnxDenoiser:
    """Calls an ONNX denoiser: `denoiser(x_t, t)` -> its first output (ε, or ε and variance)."""

    def __init__(self, model: onnx.ModelProto | str | os.PathLike, roles: DenoiserRoles,
                 labels: np.ndarray | None = None):
        from onnxvq.core.runtime import make_session

        proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
        self.session = make_session(proto)
        self.roles, self.labels = roles, labels
        info = _inputs(proto)[roles.timestep].type.tensor_type
        self.t_dtype = np.int64 if info.elem_type == onnx.TensorProto.INT64 else (
            np.int32 if info.elem_type == onnx.TensorProto.INT32 else np.float32)
        self.t_rank = len(info.shape.dim)
        if roles.class_label is not None and labels is None:
            raise CalibrationError(f"the denoiser takes a class label ({roles.class_label}): "
                                   "give the number of classes (--classes N)")

    def feeds(self, x: np.ndarray, t: int) -> dict[str, np.ndarray]:
        n = len(x)
        ts = np.full((n,) if self.t_rank else (), t, dtype=self.t_dtype)
        out = {self.roles.sample: np.ascontiguousarray(x, dtype=np.float32),
               self.roles.timestep: ts}
        if self.roles.class_label is not None:
            out[self.roles.class_label] = self.labels[:n]
        return out

    def __call__(self, x: np.ndarray, t: int) -> np.ndarray:
        return self.session.run(None, self.feeds(x, t))[0]


def initial_noise(shape: tuple[int, ...], count: int, seed: int) -> np.ndarray:
    """x_T: `count` seeded N(0, I) samples of `shape` (no batch axis)."""
    return np.random.default_rng(seed).standard_normal((count, *shape))


def sample_shape(model: onnx.ModelProto, roles: DenoiserRoles) -> tuple[int, ...]:
    dims = _inputs(model)[roles.sample].type.tensor_type.shape.dim[1:]
    if not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
        raise CalibrationError(f"the denoiser's sample input {roles.sample} needs static C, H, W")
    return tuple(d.dim_value for d in dims)


@dataclass
class TrajectoryCalibration:
    """Q-Diffusion calibration data: run the FP32 denoiser from seeded noise through DDIM and keep
    the model inputs at every `interval`-th step (k % interval == 0, k = 1..steps), `per_step`
    trajectories each. `collected` lists the (k, t) kept after `feeds` ran."""

    interval: int
    per_step: int = 8
    steps: int = 20
    eta: float = 0.0
    schedule: DDIMSchedule = field(default_factory=DDIMSchedule)
    seed: int = 0
    classes: int | None = None
    roles: Mapping[str, str] | None = None
    collected: list[tuple[int, int]] = field(default_factory=list)
    _cache: tuple | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= self.interval <= self.steps or self.per_step < 1:
            raise CalibrationError(f"--calib-steps must be in 1..{self.steps} (the DDIM steps) "
                                   f"and the per-step count positive, got {self.interval} and "
                                   f"{self.per_step}")

    def __len__(self) -> int:
        return self.per_step * (self.steps // self.interval)

    def feeds(self, model: onnx.ModelProto, batch_size: int) -> list[dict[str, np.ndarray]]:
        """Every kept step's inputs, in batches of at most `batch_size` (sampled once per batch
        size: a second call, e.g. for shortcut ranges then calibration, reuses the run)."""
        if self._cache and self._cache[0] == batch_size:
            return self._cache[1]
        roles = find_roles(model, self.roles)
        rng = np.random.default_rng(self.seed + 1)
        labels = (rng.integers(0, self.classes, self.per_step).astype(np.int64)
                  if self.classes else None)
        denoiser = OnnxDenoiser(model, roles, labels)
        kept: list[dict[str, np.ndarray]] = []
        self.collected = []

        def keep(k: int, t: int, x: np.ndarray, eps: np.ndarray) -> None:
            if k % self.interval == 0:
                self.collected.append((k, t))
                for i in range(0, len(x), batch_size):
                    kept.append(denoiser.feeds(x[i: i + batch_size], t))
                    if labels is not None and roles.class_label:
                        kept[-1][roles.class_label] = labels[i: i + batch_size]

        sampler = DDIMSampler(denoiser, self.steps, self.eta, self.schedule, self.seed)
        sampler.sample(initial_noise(sample_shape(model, roles), self.per_step, self.seed), keep)
        self._cache = (batch_size, kept)
        return kept

    def record(self) -> dict:
        return {"source": "ddim-trajectory", "samples": len(self), "interval": self.interval,
                "per_step": self.per_step, "ddim_steps": self.steps, "eta": self.eta,
                "schedule": self.schedule.schedule, "seed": self.seed,
                "classes": self.classes, "collected_steps": [k for k, _ in self.collected],
                "timesteps": [t for _, t in self.collected]}


def parse_roles(text: str | None) -> dict[str, str] | None:
    """`sample=x,timestep=t[,class_label=y]` (the --denoiser-inputs flag) as a role mapping."""
    if not text:
        return None
    pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
    if any(len(p) != 2 or not p[1].strip() for p in pairs):
        raise CalibrationError(f"--denoiser-inputs {text!r}: expected role=name pairs, e.g. "
                               "sample=x,timestep=t,class_label=y")
    return {k.strip(): v.strip() for k, v in pairs}


def trajectory_from_flags(interval: int, per_step: int, ddim: tuple[int, float, str], seed: int,
                          classes: int | None, roles: str | None) -> TrajectoryCalibration:
    steps, eta, schedule = ddim
    return TrajectoryCalibration(interval, per_step, steps, eta, DDIMSchedule(schedule=schedule),
                                 seed, classes, parse_roles(roles))
