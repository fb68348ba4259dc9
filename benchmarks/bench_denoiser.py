"""Q-Diffusion on the corpus denoisers: final-sample PSNR of a 20-step DDIM run, quantized vs FP32.

    python benchmarks/bench_denoiser.py               # diffusers UNet2DModel and DiT (tiny)

Models: `diffusers_unet2d_tiny` and `diffusers_dit_tiny` (torchscript17 exports; random weights:
the figures measure the method's error, not a trained model's sample quality). W8/A8 minmax,
target ort. Calibration: the FP32 model's own DDIM run (20 steps, η = 0, linear β) from seeded
noise, 16 trajectories, keeping the inputs of the last step only (`--calib-steps 20`, one-step)
or of every step (`--calib-steps 1`, time-step-aware); the UNet also with `--split-shortcut 1`
(every decoder shortcut split: the random-weight parts differ by only 1.3–3×).
Evaluation (`onnxvq.verify.denoiser.compare_denoiser`): 16 other seeded noises through the same
20-step loop with each model; final-sample MSE/PSNR (data range [-1, 1]) and the mean per-step
noise-prediction SQNR. Results: `results/denoiser.json`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from onnxvq.calibrate.denoiser import TrajectoryCalibration
from onnxvq.core.config import QuantConfig
from onnxvq.models.corpus import DENOISER_ENTRIES, ensure_export
from onnxvq.quantizer.run import quantize
from onnxvq.verify.denoiser import compare_denoiser

RESULTS = Path(__file__).resolve().parent / "results" / "denoiser.json"
RUNS = {"diffusers_unet2d_tiny": [(20, None), (1, None), (20, 1.0), (1, 1.0)],
        "diffusers_dit_tiny": [(20, None), (1, None)]}


def row(name: str, interval: int, split: float | None) -> dict:
    path = ensure_export(name, "torchscript17")
    classes = DENOISER_ENTRIES[name].counts.classes
    calib = TrajectoryCalibration(interval=interval, per_step=16, steps=20, classes=classes)
    result = quantize(path, calib, QuantConfig(batch_size=16, split_shortcut=split))
    split_applied = sum(p.applied for p in result.passes if p.pass_id == "split-shortcut")
    c = compare_denoiser(path, result.model, steps=20, samples=16, classes=classes)
    out = {"model": name, "calib_steps": interval, "calibration_samples": len(calib),
           "split_shortcut": split, "splits": split_applied, "final_mse": c.final_mse,
           "final_psnr_db": round(c.final_psnr_db, 2),
           "mean_step_sqnr_db": round(float(np.mean(c.step_sqnr_db)), 2),
           "step_sqnr_db": [round(s, 2) for s in c.step_sqnr_db]}
    print(f"{name} calib-steps {interval} split {split}: PSNR {c.final_psnr_db:.2f} dB, "
          f"mean step SQNR {out['mean_step_sqnr_db']} dB ({split_applied} splits)", flush=True)
    return out


def main() -> None:
    rows = [row(name, c, s) for name, runs in RUNS.items() for c, s in runs]
    out = {"load": os.getloadavg(), "rows": rows}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1))
    print(json.dumps(out["load"]))


if __name__ == "__main__":
    main()
