"""Rich renderings of API results for the terminal."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from onnxvq.api import Inspection


def render_inspection(console: Console, result: Inspection) -> None:
    s = result.structure
    summ = s.summary()
    overview = Table(title=f"onnxvq inspect: {result.path}", show_header=False, title_justify="left")
    overview.add_column(style="bold")
    overview.add_column()
    for key in ("blocks", "attentions", "layernorms", "mlps", "residual_adds", "dim", "heads",
                "head_dim", "opset"):
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
    if not s.is_vit:
        console.print("[yellow]no transformer blocks found[/]")


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
