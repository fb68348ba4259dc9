"""Rich renderings of API results for the terminal."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from onnxvq.api import Inspection
from onnxvq.quantizer.result import model_bytes


def render_inspection(console: Console, result: Inspection) -> None:
    s = result.structure
    summ = s.summary()
    overview = Table(title=f"onnxvq inspect: {result.path}", show_header=False,
                     title_justify="left")
    overview.add_column(style="bold")
    overview.add_column()
    for key in ("blocks", "attentions", "layernorms", "rmsnorms", "mlps", "residual_adds", "dim",
                "heads", "head_dim", "opset"):
        if key in summ:  # rmsnorms: only where the model has any
            overview.add_row(key, str(summ[key]))
    overview.add_row("attention form", ", ".join(summ["attention"]) or "-")
    overview.add_row("attention bias/mask", "yes" if summ["attention_bias"] else "no")
    overview.add_row("norm placement", ", ".join(summ["placement"]) or "-")
    overview.add_row("activation", ", ".join(summ["activation"]) or "-")
    overview.add_row("patch embedding", ", ".join(summ["patch_embed"]) or "-")
    overview.add_row("head", ", ".join(summ["head"]) or "-")
    overview.add_row("other softmax", str(summ["other_softmax"]))
    console.print(overview)
    if s.blocks:
        console.print(_blocks_table(result))
    passes = Table(title="canonicalisation", title_justify="left")
    for col in ("pass", "applied", "refused", "seconds"):
        passes.add_column(col, justify="right" if col != "pass" else "left")
    for r in result.canonicalization.passes:
        passes.add_row(r.pass_id, str(r.applied), str(len(r.refused)), f"{r.seconds:.2f}")
    console.print(passes)
    if result.canonicalization.numeric:
        console.print(f"canonical vs input: max |diff| "
                      f"{result.canonicalization.numeric.max_abs_diff:.2e}")
    if summ["unrecognised"]:
        ops = ", ".join(f"{op}×{n}" for op, n in summ["unrecognised"].items())
        console.print(f"[dim]not part of a recognised unit (shape arithmetic, layout): {ops}[/]")
    if s.adaln is not None:
        a = s.adaln.to_dict()
        console.print(f"adaLN-Zero conditioning (DiT): {a['modulated_norms']} modulated "
                      f"LayerNorms, {a['gates']} gates, {a['conditioning_linears']} "
                      "conditioning linears")
    if s.is_cnn:
        console.print(_cnn_table(s.cnn))
    elif not s.is_vit:
        console.print("[yellow]no transformer blocks found[/]")


def _cnn_table(cnn) -> Table:
    t = Table(title="convolutional network (no transformer blocks)", show_header=False,
              title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    for key, value in cnn.counts.items():
        t.add_row(key.replace("_", " "), str(value))
    t.add_row("activations", ", ".join(f"{k}×{v}" for k, v in sorted(cnn.activations.items()))
              or "-")
    return t


def _blocks_table(result: Inspection) -> Table:
    t = Table(title="blocks", title_justify="left")
    for col in ("#", "placement", "attention", "heads×dim", "scale", "bias", "mlp", "residuals"):
        t.add_column(col)
    for b in result.structure.blocks:
        a = b.attention
        mlp = (f"{b.mlp.fc1.in_features}→{b.mlp.fc1.out_features}→{b.mlp.fc2.out_features} "
               f"{b.mlp.activation.kind}") if b.mlp else "-"
        t.add_row(str(b.index), b.placement, a.qkv, f"{a.heads}×{a.head_dim}", f"{a.scale:.4g}",
                  "yes" if a.additive_bias else "no", mlp, str(len(b.residuals)))
    return t


def quantization_dict(result, model_path, written: dict) -> dict:
    """`quantize --json`: what was written, the settings, and what each pass did."""
    return {"input": str(model_path), **{k: str(v) for k, v in written.items()},
            "bytes": {"input": model_bytes(model_path), "output": model_bytes(written["model"])},
            "config": result.config.to_dict(), "calibration": result.calibration,
            "structure": result.structure.counts,
            "quantized": {"weights": len(result.plan.weights),
                          "activations": len(result.plan.activations)},
            "passes": [{"pass": r.pass_id, "applied": r.applied, **r.counts}
                       for r in result.passes],
            "skipped": [{"node": n, "reason": why} for n, why in result.plan.skipped],
            "refused": result.refusals,
            "fidelity": result.fidelity, "custom_ops": custom_ops(result.model),
            **({"mixed_precision": result.mixed_precision} if result.mixed_precision else {})}


def demo_dict(demo) -> dict:
    return {"fp32": str(demo.fp32_path), "int8": str(demo.quant_path),
            "latency_ms": demo.latency, "bytes": demo.sizes,
            "fidelity": {k: getattr(demo.fidelity, k) for k in (
                "samples", "cosine", "sqnr_db", "max_abs_diff", "top1_agreement")}}


def render_quantization(console: Console, result, model_path, out_path) -> None:
    from pathlib import Path

    cfg = result.config
    t = Table(title=f"onnxvq quantize → {out_path}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    s = result.structure.counts
    t.add_row("structure", ", ".join(f"{k} {v}" for k, v in s.items()))
    t.add_row("settings", f"{cfg.method}, target {cfg.target}, W{cfg.w_bits}/A{cfg.a_bits}/"
              f"attn{cfg.attention_bits}" + (" +PTS" if cfg.pts else "")
              + (" +LIS" if cfg.lis else ""))
    cal = result.calibration
    t.add_row("calibration", f"{cal['samples']} samples from {cal['source']} in {cal['seconds']} s")
    t.add_row("quantized", f"{len(result.plan.weights)} weights, "
              f"{len(result.plan.activations)} activation tensors")
    for r in result.passes:
        t.add_row(r.pass_id, f"{r.applied} applied" +
                  "".join(f", {k} {v}" for k, v in r.counts.items() if k != "bytes_saved")
                  + _refused(r))
    for o in result.fidelity.get("outputs", []):  # the fidelity gate (verify/gate.py)
        t.add_row(f"fidelity {o['output']}", f"SQNR {o['sqnr_db']:.1f} dB, cosine "
                  f"{o['cosine']:.4f} on {result.fidelity['source']}")
    mp = result.mixed_precision
    if mp:  # accuracy-aware mixed precision: the bits chosen per Linear
        t.add_row("mixed precision", f"{len(mp['raised'])} Linears raised ("
                  + ", ".join(f"{n} {mp['layers'][n]}" for n in mp["raised"][:8])
                  + f"); output SQNR {mp['sqnr_db']:.1f} dB, agreement "
                  f"{100 * mp['agreement']:.1f} %, target {'met' if mp['met'] else 'NOT met'}")
    if result.plan.skipped:
        t.add_row("kept float", "; ".join(f"{n} ({why})" for n, why in result.plan.skipped[:6]))
    size_in, size_out = model_bytes(model_path), model_bytes(out_path)
    if size_in:
        t.add_row("file size", f"{size_in / 1e6:.2f} MB → {size_out / 1e6:.2f} MB "
                  f"({size_in / max(size_out, 1):.1f}× smaller)")
    t.add_row("sidecar", str(Path(out_path).with_suffix(".json")))
    ops = custom_ops(result.model)
    if ops:
        t.add_row("runtime", f"{sum(ops.values())} com.onnxvq nodes ("
                  + ", ".join(f"{k} {v}" for k, v in ops.items()) + "): full speed with onnxvq's "
                  "kernels registered (onnxvq.plugins.ort_library_path()); a stock ONNX Runtime "
                  "session runs their local functions (slower; codes within one step)")
    console.print(t)


def _refused(r) -> str:
    """", N refused: the most frequent reason" (every node and reason: --json, the sidecar)."""
    from collections import Counter

    if not r.refused:
        return ""
    (why, n), *others = Counter(why for _, why in r.refused).most_common()
    return f", {len(r.refused)} refused: {why}" + (f" ({n}; {len(others)} other reasons)"
                                                    if others else "")


def custom_ops(model) -> dict[str, int]:
    """com.onnxvq node counts of a written model, by op type (sorted by name)."""
    from collections import Counter

    counts = Counter(n.op_type for n in model.graph.node if n.domain == "com.onnxvq")
    return dict(sorted(counts.items()))


def render_demo(console: Console, demo) -> None:
    f = demo.fidelity
    t = Table(title="onnxvq demo: small ViT (4 blocks, dim 384, 224²), noise calibration",
              title_justify="left")
    for col in ("", "FP32", "int8 (onnxvq)", "ratio"):
        t.add_column(col, justify="right")
    for b in (1, 8):
        fp, q = demo.latency[f"fp32@{b}"], demo.latency[f"int8@{b}"]
        t.add_row(f"latency batch {b} (ms, ORT CPU)", f"{fp:.2f}", f"{q:.2f}", f"{q / fp:.2f}×")
    t.add_row("file size (MB)", f"{demo.sizes['fp32'] / 1e6:.2f}",
              f"{demo.sizes['int8'] / 1e6:.2f}",
              f"{demo.sizes['int8'] / demo.sizes['fp32']:.2f}×")
    console.print(t)
    console.print(f"fidelity on {f.samples} held-out inputs: cosine {f.cosine:.4f}, "
                  f"SQNR {f.sqnr_db:.1f} dB, top-1 agreement {f.top1_agreement:.1%}")
    console.print(f"models: {demo.fp32_path}, {demo.quant_path}")
