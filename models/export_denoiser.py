"""Export the diffusers denoisers of the corpus (tiny configs, random weights; needs torch and
diffusers, the [export] extra) and check them against torch.

The ONNX model takes `sample` [N, C, H, W], `timestep` [N] (int64) and, for DiT, `class_labels`
[N] (int64), and returns `noise_pred` (DiT: 2C channels, ε then the learned variance).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch

from onnxvq.core.graph import compatible_ir, save_model
from onnxvq.core.runtime import make_session
from onnxvq.models.architecture import CorpusEntry, CorpusError

log = logging.getLogger("onnxvq.models.export")
MAX_ABS_DIFF = 1e-4


class _Denoiser(torch.nn.Module):
    """diffusers models return an output object; exporters want a plain tensor."""

    def __init__(self, model: torch.nn.Module, conditional: bool):
        super().__init__()
        self.model, self.conditional = model, conditional

    def forward(self, sample, timestep, class_labels=None):
        if self.conditional:
            return self.model(sample, timestep, class_labels=class_labels).sample
        return self.model(sample, timestep).sample


def build_denoiser(entry: CorpusEntry) -> _Denoiser:
    """The seeded module in eval mode, weights spread as in `export._spread_constant_parameters`
    (diffusers zero-initialises DiT's adaLN-Zero modulation and output layers)."""
    from diffusers import DiTTransformer2DModel, UNet2DModel

    from onnxvq.models.export import _spread_constant_parameters

    torch.manual_seed(0)
    c = entry.counts
    if dict(entry.options)["arch"] == "unet2d":
        model = UNet2DModel(sample_size=entry.image, in_channels=c.channels,
                            out_channels=c.channels, layers_per_block=1,
                            block_out_channels=(32, 64), norm_num_groups=8, attention_head_dim=16,
                            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                            up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    else:
        model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16,
                                      in_channels=c.channels, out_channels=2 * c.channels,
                                      num_layers=c.blocks, sample_size=entry.image, patch_size=2,
                                      num_embeds_ada_norm=c.classes)
    module = _Denoiser(model, c.classes is not None).eval()
    _spread_constant_parameters(module)
    with torch.no_grad():  # zero-initialised weights (adaLN-Zero) get a trained-like spread too
        for p in module.parameters():
            if p.numel() > 1 and bool((p == 0).all()):
                p.add_(torch.randn_like(p) * 0.02)
    return module


def example_inputs(entry: CorpusEntry, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    c = entry.counts
    x = torch.randn(batch, c.channels, entry.image, entry.image, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    if c.classes is None:
        return x, t
    return x, t, torch.randint(0, c.classes, (batch,), generator=g)


def export_denoiser(entry: CorpusEntry, exporter: str, path: Path) -> dict:
    from onnxvq.models.export import _versions, _write_json_atomic

    module = build_denoiser(entry)
    names = ["sample", "timestep", "class_labels"][: 3 if entry.counts.classes else 2]
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    fd, tmp = tempfile.mkstemp(prefix=".export.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        args = example_inputs(entry, 2, seed=1)
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=1024)
            torch.onnx.export(module, args, tmp, dynamo=True, external_data=False,
                              input_names=names, output_names=["noise_pred"],
                              dynamic_shapes=tuple({0: batch} for _ in names))
        else:
            torch.onnx.export(module, args, tmp, dynamo=False, opset_version=17,
                              input_names=names, output_names=["noise_pred"],
                              dynamic_axes={n: {0: "batch"} for n in [*names, "noise_pred"]})
        model = compatible_ir(onnx.load(tmp))
    except Exception as exc:  # the exporters raise anything from RuntimeError to their own types
        raise CorpusError(f"{entry.name} ({exporter}) did not export: "
                          f"{type(exc).__name__}: {exc}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    check = example_inputs(entry, 3, seed=2)
    with torch.no_grad():
        expected = module(*check).numpy()
    got = make_session(model).run(None, {n: a.numpy() for n, a in zip(names, check,
                                                                       strict=True)})[0]
    diff = float(np.abs(got - expected).max())
    if not diff <= MAX_ABS_DIFF:
        raise CorpusError(f"{entry.name} ({exporter}): ORT differs from torch by {diff:.3g}")
    save_model(model, path)
    manifest = {"name": entry.name, "exporter": exporter, "versions": _versions(),
                "export_seconds": round(seconds, 2), "onnx_bytes": path.stat().st_size,
                "max_abs_diff": diff, "logits_std": float(expected.std()), "check_batch": 3,
                "op_histogram": dict(sorted(Counter(n.op_type for n in model.graph.node).items()))}
    _write_json_atomic(path.with_suffix(".json"), manifest)
    log.info("%s %s: %.1f s, max |ORT - torch| = %.2e", entry.name, exporter, seconds, diff)
    return manifest
