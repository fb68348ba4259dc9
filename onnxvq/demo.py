"""The embedded default job: a small ViT built in code, quantized, measured. Needs no download."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from onnxvq.calibrate import NoiseSource, batches
from onnxvq.core.config import QuantConfig
from onnxvq.core.errors import UsageError
from onnxvq.core.files import check_writable
from onnxvq.core.graph import save_model
from onnxvq.quantizer.result import QuantResult
from onnxvq.quantizer.run import quantize
from onnxvq.verify.fidelity import Fidelity, fidelity, latency_ms

DEMO_BATCH = 8


@dataclass
class DemoResult:
    fp32_path: Path
    quant_path: Path
    result: QuantResult
    fidelity: Fidelity
    latency: dict[str, float]  # "fp32@1", "int8@1", "fp32@8", "int8@8" in ms
    sizes: dict[str, int]


def demo_model():
    from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit

    # DeiT-S width and resolution, 4 blocks deep: int8 GEMMs pay at 197 tokens × 384 channels, and
    # the model builds and quantizes in seconds.
    return build_tiny_vit(TinyViTConfig(depth=4, dim=384, heads=6, mlp_ratio=4, patch=16,
                                        image=224, classes=1000))


def run_demo(folder: Path, *, pts: bool = False, lis: bool = False) -> DemoResult:
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"-o {folder}: is a file; the demo writes its models into a folder")
    check_writable(folder / "tiny_vit.onnx")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"-o {folder}: cannot create it ({exc.strerror or exc})") from None
    fp32 = demo_model()
    fp32_path = save_model(fp32, folder / "tiny_vit.onnx")
    cfg = QuantConfig(calib_size=32, batch_size=8, pts=pts, lis=lis)
    result = quantize(fp32, None, cfg)
    quant_path = result.save(folder / "tiny_vit.int8.onnx")
    held_out = NoiseSource([3, 224, 224], 32, seed=1)  # not the calibration samples (seed 0)
    fid = fidelity(fp32, result.model, batches(held_out, 8, fp32.graph.input[0].name))
    lat = {}
    for b in (1, DEMO_BATCH):
        lat[f"fp32@{b}"] = latency_ms(fp32, batch=b)
        lat[f"int8@{b}"] = latency_ms(result.model, batch=b)
    sizes = {"fp32": fp32_path.stat().st_size, "int8": quant_path.stat().st_size}
    return DemoResult(fp32_path, quant_path, result, fid, lat, sizes)
