"""Did the flags the user gave do anything? `--pts` on a model without LayerNorm (LeViT) or
`--lis` on one whose attention the recogniser does not find used to write a file byte-identical
to W8/A8 and say nothing. RMSNorms (AIMv2) are named: `--pts` leaves them float.

Each integer-op flag that replaced nothing gets a warning naming the flag and why; when every
such flag the user gave replaced nothing, the run is refused (UnsupportedModelError, exit 4) with
those reasons, once, in the error. The rewrite flags whose absence changes no integer op
(`--reparam`, `--reparam-mlp`, `--lis-qdq`, `--no-head`) only warn when they did nothing: on a CNN
they used to leave the file as plain W8/A8 without a word."""

from __future__ import annotations

import logging

from onnxvq.core.errors import UnsupportedModelError

log = logging.getLogger(__name__)

_FLAGS = (("pts", "replace-layernorm", "LayerNormalization", "IntLayerNorm"),
          ("lis", "replace-softmax", "attention Softmax", "LogIntSoftmax"))


def unapplied_flags(result) -> dict[str, str]:
    """{flag: why it replaced nothing} for each of --pts/--lis that was given and did nothing."""
    done = {r.pass_id: r for r in result.passes}
    found = {"pts": len(result.structure.layernorms), "lis": len(result.structure.attentions)}
    missing = {}
    for flag, pass_id, what, op in _FLAGS:
        r = done.get(pass_id)
        if not getattr(result.config, flag) or (r is not None and r.applied):
            continue
        if not found[flag]:
            why = f"the model has no {what} onnxvq recognises, so there is nothing for {op}"
            if flag == "pts" and result.structure.rmsnorms:
                why += f" ({_rms_reason(result.structure)})"
        else:
            reasons = sorted({why for _, why in (r.refused if r else [])}) or ["not planned"]
            why = f"all {found[flag]} {what} nodes refused: {'; '.join(reasons)[:300]}"
        missing[f"--{flag}"] = why
    return missing


# (config field, flag, the pass that does its rewrite, what it rewrites, so what) for the flags that
# only warn; the pass did nothing when it did not run (a CNN skips the FP32 rewrites) or applied 0.
_REWRITE_FLAGS = (
    ("reparam", "--reparam", "reparameterize-layernorm",
     "LayerNorm output feeding a linear", "no per-channel quantizer to fold"),
    ("reparam_mlp", "--reparam-mlp", "reparameterize-activation",
     "MLP activation feeding fc2", "no per-channel quantizer to rescale into fc2"),
    ("lis_qdq", "--lis-qdq", "log-softmax-qdq", "attention-probability Q/DQ",
     "no probabilities to give log codes"),
)


def inert_rewrite_flags(result) -> dict[str, str]:
    """{flag: why it did nothing} for --reparam/--reparam-mlp/--lis-qdq/--no-head."""
    done = {r.pass_id: r for r in result.passes}
    inert = {}
    for field_name, flag, pass_id, what, so in _REWRITE_FLAGS:
        r = done.get(pass_id)
        if not getattr(result.config, field_name) or (r is not None and r.applied):
            continue
        reasons = sorted({why for _, why in (r.refused if r else [])})
        inert[flag] = (f"every {what} refused: {'; '.join(reasons)[:300]}" if reasons
                       else f"no {what} recognised, so {so}")
    if not result.config.quantize_head and not result.structure.head:
        inert["--no-head"] = ("no classifier head recognised, so no layer was kept float "
                              "for it")
    return inert


def check_flags_applied(result) -> None:
    """Warn per flag that did nothing; refuse when none of the given integer-op flags did
    anything (the error then carries the reasons: no warning repeats them)."""
    for flag, why in inert_rewrite_flags(result).items():
        log.warning("%s did nothing: %s", flag, why)
    missing = unapplied_flags(result)
    given = [f"--{flag}" for flag, *_ in _FLAGS if getattr(result.config, flag)]
    refused = given and len(missing) == len(given)
    for flag, why in missing.items() if not refused else ():
        log.warning("%s did nothing: %s", flag, why)
    others = result.structure.other_softmax
    if result.config.lis and others and "--lis" not in missing:  # partly recognised (ConViT)
        log.warning("--lis left %d Softmax node(s) float: not in an attention onnxvq recognises "
                    "(first: %r)", len(others), others[0])
    rms = result.structure.rmsnorms
    if result.config.pts and rms and "--pts" not in missing:  # LayerNorms and RMSNorms both
        log.warning("--pts left %d RMSNorm(s) float: %s (first: %r)", len(rms),
                    _rms_reason(result.structure), rms[0].node)
    if refused:
        raise UnsupportedModelError(
            "; ".join(f"{flag} cannot apply: {why}" for flag, why in missing.items())
            + "; nothing written (drop the flag for plain W8/A8)")


def _rms_reason(structure) -> str:
    return (f"its {len(structure.rmsnorms)} RMSNorms, x·γ/√(mean(x²)+ε) without the mean, are not "
            "a LayerNorm, which IntLayerNorm's integer mean and variance need")
