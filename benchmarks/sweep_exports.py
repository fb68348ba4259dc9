"""Exports the families and corpus lack, tried as a user would (session 8's sweep).

    python benchmarks/sweep_exports.py                 # every case -> results/sweep.json
    python benchmarks/sweep_exports.py deit_ts13 ...   # some cases (merged into the JSON)
    python benchmarks/sweep_exports.py --list

Each case is a `models.families.Family` (random weights, depth-reduced) at one export variant:
TorchScript opset 13/14/17/18 or dynamo, a symbolic or a static batch, 224 or another input size.
It is exported (cached in the corpus folder as the families are), its torch module counted
(`family_counts`), then the command line is run on it as a user would: `onnxvq inspect --json`,
and `onnxvq quantize --json` with W8/A8, `--pts --lis`, W4/A8 (`--w-bits 4`) and `--target trt`
on 6 noise samples (the families' gate setting). Each quantized model is also run in ONNX Runtime
at a batch other than calibration's (1, or its static batch). Recorded per case and flag set: the
exit code, the last error line, inspect's counts beside torch's, the gate's SQNR.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from onnxvq.models.families import HF_SMALL, SWIN_SMALL, Family
from onnxvq.models.family_modules import Counts

RESULTS = Path(__file__).resolve().parent / "results" / "sweep.json"
FLAGS = {"w8a8": [], "pts-lis": ["--pts", "--lis"], "w4a8": ["--w-bits", "4"],
         "trt": ["--target", "trt"]}
NOISE = ["--samples", "6", "--batch-size", "2"]
_ANY = Counts(0, 0, 0, 0, 0)  # the sweep counts the torch module itself
_D2 = (("depth", 2),)
_TINY = (("embed_dim", 192), ("depth", 2), ("num_heads", 3))


def _f(name: str, source: str, arch: str, image: int = 224, kwargs=(), **kw) -> Family:
    return Family(f"sweep_{name}", source, arch, image, _ANY, tuple(kwargs), **kw)


CASES: dict[str, Family] = {f.name.removeprefix("sweep_"): f for f in (
    # export variants of the plainest ViTs: opsets, static batch, input sizes
    _f("deit_ts13", "timm", "deit_tiny_patch16_224", kwargs=_D2, exporter="torchscript13"),
    _f("deit_ts14", "timm", "deit_tiny_patch16_224", kwargs=_D2, exporter="torchscript14"),
    _f("deit_ts18", "timm", "deit_tiny_patch16_224", kwargs=_D2, exporter="torchscript18"),
    _f("deit_static1", "timm", "deit_tiny_patch16_224", kwargs=_D2, static_batch=1),
    _f("deit_static4", "timm", "deit_tiny_patch16_224", kwargs=_D2, static_batch=4),
    _f("deit_dynamo_static1", "timm", "deit_tiny_patch16_224", kwargs=_D2, exporter="dynamo",
       static_batch=1),
    _f("deit3_384", "timm", "deit3_small_patch16_384", 384, _D2),
    _f("vit_s_ts13_static1", "timm", "vit_small_patch16_224", kwargs=_D2,
       exporter="torchscript13", static_batch=1),
    _f("swin_ts13", "timm", "swin_tiny_patch4_window7_224", kwargs=SWIN_SMALL,
       exporter="torchscript13"),
    _f("swin_ts18_static1", "timm", "swin_tiny_patch4_window7_224", kwargs=SWIN_SMALL,
       exporter="torchscript18", static_batch=1),
    _f("swin_384", "timm", "swin_base_patch4_window12_384", 384, SWIN_SMALL),
    _f("hf_vit_ts14", "huggingface", "vit", kwargs=HF_SMALL, exporter="torchscript14"),
    _f("hf_vit_384_static1", "huggingface", "vit", 384, HF_SMALL, static_batch=1),
    _f("hf_vit_ts18", "huggingface", "vit", kwargs=HF_SMALL, exporter="torchscript18"),
    _f("tv_vit_ts14", "torchvision", "vit", kwargs=(("patch_size", 16), ("num_layers", 2),
       ("num_heads", 4), ("hidden_dim", 128), ("mlp_dim", 512)), exporter="torchscript14"),
    _f("tv_swin_v2_ts18_static1", "torchvision", "swin_v2", 256,
       SWIN_SMALL + (("window_size", (8, 8)),), exporter="torchscript18", static_batch=1),
    # timm families the corpus lacks
    _f("vit_betwixt_reg4", "timm", "vit_betwixt_patch16_reg4_gap_256", 256, _D2),
    _f("vit_small_r26_s32", "timm", "vit_small_r26_s32_224", kwargs=_D2),
    _f("levit_conv_128s", "timm", "levit_conv_128s"),
    _f("pit_ti_distilled", "timm", "pit_ti_distilled_224"),
    _f("coat_tiny", "timm", "coat_tiny", kwargs=(("serial_depths", (1, 1, 1, 1)),
       ("parallel_depth", 1))),
    _f("vit_siglip_gap", "timm", "vit_base_patch16_siglip_gap_224", kwargs=_TINY),
    _f("vit_clip_quickgelu", "timm", "vit_base_patch16_clip_quickgelu_224", kwargs=_TINY),
    _f("efficientvit_l1", "timm", "efficientvit_l1", kwargs=(("depths", (1, 1, 1, 1, 1)),)),
    _f("fastvit_mci0", "timm", "fastvit_mci0"),
    _f("sequencer2d_s", "timm", "sequencer2d_s", kwargs=(("layers", (1, 1, 1, 1)),)),
    _f("tiny_vit_21m_384", "timm", "tiny_vit_21m_384", 384),
    # Hugging Face
    _f("hf_donut_swin", "huggingface", "donut_swin", kwargs=SWIN_SMALL + (("window_size", 7),)),
    _f("hf_pvt", "huggingface", "pvt", kwargs=(("depths", (1, 1, 1, 1)),)),
    _f("hf_mobilevitv2", "huggingface", "mobilevitv2", 256,
       exporter="torchscript18"),  # its Fold (aten::col2im) needs opset 18
    _f("hf_hiera", "huggingface", "hiera", kwargs=(("depths", (1, 1, 1, 1)),)),
    _f("hf_depth_anything", "huggingface", "depth_anything", kwargs=(("backbone_config", {
        "model_type": "dinov2", "hidden_size": 192, "num_hidden_layers": 4,
        "num_attention_heads": 3, "intermediate_size": 768, "patch_size": 14,
        "image_size": 518, "out_indices": [1, 2, 3, 4], "reshape_hidden_states": False}),
        ("reassemble_hidden_size", 192), ("patch_size", 14),
        ("neck_hidden_sizes", (24, 48, 96, 192)), ("fusion_hidden_size", 64)), heads=0),
    _f("hf_swin_backbone", "huggingface", "swin_backbone",
       kwargs=SWIN_SMALL + (("window_size", 7), ("out_features", ["stage4"])), heads=0),
    _f("hf_dinov2_backbone", "huggingface", "dinov2_backbone",
       kwargs=HF_SMALL[:4] + (("patch_size", 14), ("out_features", ["stage2"])), heads=0),
    _f("hf_deit", "huggingface", "deit", kwargs=HF_SMALL),
    # session 12: dynamo at the other opsets a user asks for, and timm families not yet tried
    _f("deit_dynamo19", "timm", "deit_tiny_patch16_224", kwargs=_D2, exporter="dynamo19"),
    _f("deit_dynamo21", "timm", "deit_tiny_patch16_224", kwargs=_D2, exporter="dynamo21"),
    _f("swin_dynamo21", "timm", "swin_tiny_patch4_window7_224", kwargs=SWIN_SMALL,
       exporter="dynamo21"),
    _f("hf_vit_dynamo21", "huggingface", "vit", kwargs=HF_SMALL, exporter="dynamo21"),
    _f("vit_relpos_small", "timm", "vit_relpos_small_patch16_224", kwargs=_D2),
    _f("vit_srelpos_small", "timm", "vit_srelpos_small_patch16_224", kwargs=_D2),
    _f("vit_b32_tiny", "timm", "vit_base_patch32_224", kwargs=_TINY),
    # VOLO and CAFormer at full depth (their entry points fix it). VOLO folds (aten::col2im):
    # TorchScript has no symbolic at opset 17 and fails inside torch at 18; dynamo exports it
    _f("volo_d1", "timm", "volo_d1_224", exporter="dynamo"),
    _f("efficientformerv2_s0", "timm", "efficientformerv2_s0"),
    _f("efficientvit_m0", "timm", "efficientvit_m0"),
    _f("mobilevit_xs", "timm", "mobilevit_xs", 256),
    _f("pvt_v2_b0", "timm", "pvt_v2_b0"),
    _f("caformer_s18", "timm", "caformer_s18"),
)}


def _cli(*args: str, timeout: float = 900) -> tuple[int, dict | None, str]:
    """Run `onnxvq ARGS --json`: (exit code, the JSON document or None, the last stderr line)."""
    onnxvq = Path(sys.executable).with_name("onnxvq")  # the console script of this environment
    proc = subprocess.run([str(onnxvq), *args, "--json"], capture_output=True, text=True,
                          timeout=timeout)
    try:
        doc = json.loads(proc.stdout) if proc.stdout.strip() else None
    except json.JSONDecodeError:
        doc = None
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    error = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), "")
    return proc.returncode, doc, (error or (lines[-1] if lines else ""))[:300]


def _run_other_batch(path: Path, family: Family) -> str | None:
    """The quantized model run in ONNX Runtime at batch 1 (or its static batch): None, or the
    error."""
    import numpy as np

    from onnxvq.core.runtime import make_session
    try:
        session = make_session(str(path))
        x = np.random.default_rng(0).standard_normal(
            (family.static_batch or 1, 3, family.image, family.image)).astype(np.float32)
        outs = session.run(None, {session.get_inputs()[0].name: x})
        return None if all(np.isfinite(o).all() for o in outs) else "non-finite output"
    except Exception as exc:  # any ORT failure is what the sweep records
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def sweep(name: str, family: Family) -> dict:
    from onnxvq.models.families import ensure
    from onnxvq.models.family_modules import build, family_counts

    row: dict = {"case": name, "source": family.source, "arch": family.arch,
                 "exporter": family.exporter, "static_batch": family.static_batch,
                 "image": family.image}
    start = time.perf_counter()
    try:
        row["torch_counts"] = family_counts(build(family)).as_dict()
        path = ensure(family)
    except Exception as exc:  # an export that fails is a row of the table
        row["export_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        return row
    row["export_s"] = round(time.perf_counter() - start, 1)
    rc, doc, err = _cli("inspect", str(path))
    row["inspect"] = {"exit": rc, "error": err if rc else None}
    if doc:
        s = doc["summary"]
        row["found"] = {k: s[k] for k in ("blocks", "attentions", "layernorms", "mlps",
                                          "residual_adds")}
        row["other_softmax"], row["refusals"] = s.get("other_softmax"), len(doc["refusals"])
        row["opset"] = s.get("opset")
    with tempfile.TemporaryDirectory() as tmp:
        for key, flags in FLAGS.items():
            out = Path(tmp) / f"{key}.onnx"
            rc, doc, err = _cli("quantize", str(path), "-o", str(out), *NOISE, *flags)
            res: dict = {"exit": rc, "error": err if rc else None}
            if doc and doc.get("fidelity"):
                res["sqnr_db"] = [round(o["sqnr_db"], 1) for o in doc["fidelity"]["outputs"]]
            if rc == 0:
                res["ort_other_batch"] = _run_other_batch(out, family)
            row[key] = res
    return row


def _cell(res: dict | None) -> str:
    if res is None:
        return "-"
    if res["exit"]:
        return f"exit {res['exit']}"
    db = "/".join(f"{v:.1f}" for v in res.get("sqnr_db", []))
    return db + ("" if res.get("ort_other_batch") is None else " (ORT!)")


def table(rows: list[dict]) -> str:
    head = "| case | export | torch counts | found | W8/A8 | --pts --lis | W4/A8 | trt |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        export = r["exporter"] + (f" b{r['static_batch']}" if r["static_batch"] else "") + (
            f" {r['image']}px" if r["image"] != 224 else "")
        tc = "/".join(str(v) for v in r.get("torch_counts", {}).values())
        if "export_error" in r:
            lines.append(f"| {r['case']} | {export} | {tc} | export failed: "
                         f"{r['export_error'][:80]} | | | | |")
            continue
        found = "/".join(str(v) for v in r.get("found", {}).values()) or (
            f"exit {r['inspect']['exit']}")
        cells = " | ".join(_cell(r.get(k)) for k in FLAGS)
        lines.append(f"| {r['case']} | {export} | {tc} | {found} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", metavar="CASE")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(CASES))
        return 0
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; --list names them")
    previous = json.loads(args.out.read_text()) if args.out.exists() else {"rows": []}
    rows = {r["case"]: r for r in previous["rows"]}
    for name in args.cases or CASES:
        rows[name] = sweep(name, CASES[name])
        print(table([rows[name]]).splitlines()[-1], flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": [rows[n] for n in CASES if n in rows]}, indent=1))
    print(table([rows[n] for n in CASES if n in rows]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
