"""The grown export corpus: the families users bring, at their smallest configs (random weights).

    python -m onnxvq.models.families --all        # export every family (cached in .corpus)

Each entry is one timm / torchvision / Hugging Face model with fewer blocks where the library
takes a depth override, exported once (TorchScript opset 17, or dynamo where named), checked
against torch, and cached beside the main corpus (`corpus.corpus_dir()`). `counts` are the
torch modules' own numbers (`family_modules.family_counts`, checked by
tests/models/test_families.py) and what `onnxvq inspect` must find; `unsupported` says why
recognition does not cover a family yet (its quantization with --pts/--lis is then refused by
name instead of written silently as W8/A8); where it covers part of it, `found` is what inspect
finds (--lis then warns about the Softmaxes it leaves float).
Special exports: `external` writes the weights as external data, `dynamic_hw` keeps height and
width symbolic. Tags: "ci" (CI's representative subset), "big" (no depth override: 24 M
parameters, its torch-count check is a slow test).
The entries live by source (timm.py, hf.py, torchvision.py; timm_modern.py: today's timm exports,
RoPE, RMSNorm, registers; classic.py: the seventh round's conv-hybrid, nested and detection
families; sweep.py: session 8's export variants (opsets 14/18, static batch, 384 px) and models;
`base.Family` is their record);
FAMILIES is all of them by name.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from onnxvq.models.corpus import CorpusError
from onnxvq.models.families.base import HF_SMALL, SWIN_SMALL, Family, vit
from onnxvq.models.families.classic import CLASSIC
from onnxvq.models.families.hf import HUGGINGFACE
from onnxvq.models.families.sweep import SWEEP
from onnxvq.models.families.timm import TIMM
from onnxvq.models.families.timm_modern import TIMM_MODERN
from onnxvq.models.families.torchvision import TORCHVISION
from onnxvq.models.family_modules import Counts, build

__all__ = ["FAMILIES", "HF_SMALL", "SWIN_SMALL", "Counts", "Family", "ensure", "export", "main",
           "vit"]

log = logging.getLogger("onnxvq.models.families")


def _by_name(*groups: tuple[Family, ...]) -> dict[str, Family]:
    families: dict[str, Family] = {}
    for family in (f for group in groups for f in group):
        if family.name in families:  # a second entry would silently replace the first
            raise ValueError(f"family {family.name!r} is declared twice")
        families[family.name] = family
    return families


FAMILIES: dict[str, Family] = _by_name(TIMM, HUGGINGFACE, TORCHVISION, TIMM_MODERN, CLASSIC,
                                       SWEEP)


def ensure(family: Family, *, force: bool = False) -> Path:
    """The family's exported model, exporting it when missing."""
    manifest = family.path.with_suffix(".json")
    if not force and family.path.exists() and manifest.exists():
        return family.path
    export(family)
    return family.path


def export(family: Family) -> dict:
    import numpy as np
    import onnx
    import torch

    from onnxvq.core.graph import save_model
    from onnxvq.core.runtime import make_session
    module = build(family)
    if family.exporter.startswith("torchscript") and family.exporter < "torchscript14":
        for m in module.modules():  # no SDPA symbolic below opset 14: timm's explicit path
            if getattr(m, "fused_attn", False):
                m.fused_attn = False
    shape = (3, family.image, family.image)
    batch = family.static_batch or 2
    example = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(1))
    family.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = family.path.with_name(f".{family.path.name}.export.onnx")
    start = time.perf_counter()
    axes = {0: "batch", 2: "height", 3: "width"} if family.dynamic_hw else {0: "batch"}
    dynamic = family.static_batch is None
    try:
        if family.exporter.startswith("dynamo"):  # "dynamo" (torch's default opset) or "dynamoNN"
            dim = torch.export.Dim("batch", min=1, max=1024)
            opset = family.exporter.removeprefix("dynamo")
            torch.onnx.export(module, (example,), str(tmp), dynamo=True, external_data=False,
                              dynamic_shapes=({0: dim},) if dynamic else None,
                              input_names=["input"], output_names=["logits"],
                              **({"opset_version": int(opset)} if opset else {}))
        else:
            opset = int(family.exporter.removeprefix("torchscript"))
            torch.onnx.export(module, (example,), str(tmp), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": axes, "logits": {0: "batch"}} if dynamic
                              else None)
        model = onnx.load(str(tmp))
    except Exception as exc:  # the exporters raise anything from RuntimeError to their own types
        raise CorpusError(f"{family.name} did not export: {type(exc).__name__}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    x = torch.randn(family.static_batch or 3, *shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = module(x).numpy()
    got = make_session(model).run(None, {model.graph.input[0].name: x.numpy()})[0]
    diff = float(np.abs(got - want).max())
    if not diff <= family.atol:
        raise CorpusError(f"{family.name}: ORT differs from torch by {diff:.3g}")
    save_model(model, family.path, external_data=family.external)
    record = {"name": family.name, "exporter": family.exporter, "export_seconds": round(seconds, 2),
              "max_abs_diff": diff, "external_data": family.external}
    family.path.with_suffix(".json").write_text(json.dumps(record, indent=1))
    log.info("%s: exported in %.1f s, max |ORT - torch| %.1e", family.name, seconds, diff)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m onnxvq.models.families", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(FAMILIES))
    parser.add_argument("--all", action="store_true")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    log.setLevel(logging.INFO)
    failures = 0
    for name in FAMILIES if args.all else args.names:
        try:
            ensure(FAMILIES[name], force=args.force)
        except (CorpusError, KeyError) as exc:
            failures += 1
            log.error("%s: %s", name, exc)
    return 1 if failures else 0

