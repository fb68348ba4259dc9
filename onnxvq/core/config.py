"""Quantization settings: one frozen dataclass shared by the CLI, the Python API and the sidecar."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Literal

from onnxvq.core.errors import UsageError

METHODS = ("minmax", "ema", "percentile", "omse", "block-mse", "similarity", "twin")
TARGETS = ("ort", "trt")
WEIGHT_METHODS = ("max", "mse", "output", "gptq")  # onnxvq.calibrate.weights
QUANTIZED_LINEAR = ("auto", "on", "off")  # --quantized-linear: auto = where AMX or AVX-512 VNNI
ORT_WEIGHTS = ("auto", "int8", "uint8")  # --ort-weights: auto = uint8 where MLAS's U8S8 saturates
LIS_BASES = {"2": 1, "sqrt2": 2}  # --lis-base -> LogIntSoftmax octave_steps (codes per octave)
RANKINGS = ("sensitivity", "nuclear")  # onnxvq.verify.mixed: which Linears to raise first
# One switch for the best low-bit result (README "Low bits"): each recipe fills the fields a user
# left at their defaults, so `recipe="repq", weight_method="mse"` keeps the user's choice.
RECIPES = {
    "repq": {"method": "omse", "reparam": True, "reparam_mlp": True, "weight_method": "gptq",
             "edge_bits": 8, "center": True,
             "lis_base": "sqrt2"},  # log-sqrt2 >= log2 on both CIFAR models (h13)
    # 8 bits (README "SmoothQuant"): migration into the weights plus bias correction
    "smooth": {"smooth": True, "bias_correction": True, "center": True},
}


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize and how.

    target "ort": uint8 asymmetric activations (ORT's int8 kernels take them); "trt": int8
    symmetric, zero point 0 everywhere, as TensorRT requires. Weights are always int8 symmetric per
    output channel with scale max|w|/(2^(b-1)-1) (for target ort stored as uint8 W+128 with zero
    point 128 where `ort_weights` says so: the same values). Bit widths below 8 keep 8-bit
    containers with 2^b-level scales (values past the calibrated range saturate at the
    container's edge).
    """

    method: Literal["minmax", "ema", "percentile", "omse", "block-mse", "similarity",
                    "twin"] = "minmax"
    target: Literal["ort", "trt"] = "ort"
    w_bits: int = 8
    a_bits: int = 8
    attn_bits: int | None = None  # attention MatMul inputs; None: a_bits, or 4 with --lis(-qdq)
    momentum: float = 0.01  # ema
    percentile: float = 1e-5  # tail mass clipped on each side
    skip: tuple[str, ...] = ()  # fnmatch patterns on node names kept float
    quantize_patch_embed: bool = True
    quantize_head: bool = True
    quantize_attention: bool = True  # the Q·Kᵀ and A·V MatMuls
    pts: bool = False
    lis: bool = False
    lis_base: str = "2"  # LogIntSoftmax codes: "2" (FQ-ViT log2) or "sqrt2" (RepQ-ViT log-sqrt2)
    lis_qdq: bool = False  # LIS's log codes emulated with standard ops (no custom ops; h13)
    reparam: bool = False  # RepQ-ViT: per-channel LayerNorm-output quantizers folded (h4)
    reparam_mlp: bool = False  # per-channel MLP-activation quantizers via a rescale into fc2 (h4)
    weight_method: str = "max"  # max, mse, output, gptq: scales/rounding of the weights (h4)
    bias_correction: bool = False  # bias += E[x] (W - W^) (h4)
    smooth: bool = False  # SmoothQuant: Linear-input factors (alpha searched) folded (h10)
    center: bool = False  # target trt: activation offsets folded into beta/biases (h10)
    edge_bits: int | None = None  # patch embedding + head, weights and inputs; None: w/a_bits
    recipe: str | None = None  # a RECIPES name (h4)
    calib_size: int = 256
    batch_size: int = 16
    seed: int = 0  # noise calibration inputs and the phase of the strided subsample
    search_samples: int = 32  # block-mse/similarity: calibration samples the search runs on
    fisher: bool = False  # block-mse/twin: weight the output error by a Fisher estimate
    fail_below: float | None = None  # fidelity gate: minimum SQNR in dB (None: collapse only)
    ort_fusions: bool = True  # target ort: lower the QDQ graph into ORT fused kernels
    # target ort: int8 Linears as com.onnxvq QuantizedLinear: auto = if this CPU has AMX or VNNI
    quantized_linear: str = "auto"
    # target ort: the weights ORT's own int8 kernels read, int8 or uint8 W+128 with zero point
    # 128 (exact where MLAS's U8S8 kernels saturate); auto = uint8 without VNNI and AMX
    ort_weights: str = "auto"
    split_shortcut: float | None = None  # split Conv/MatMul over Concats with ranges > this ratio
    weight_only: bool = False  # Linear weights at w_bits, activations float (MatMulNBits) (h9)
    layer_bits: tuple[tuple[str, int], ...] = ()  # (node glob, bits): a Linear's weight + input
    target_sqnr: float | None = None  # mixed precision: output SQNR (dB) to reach (h9)
    max_drop: float | None = None  # mixed precision: top-1 disagreement with FP32 allowed, %
    rank_by: str = "sensitivity"  # mixed precision: RANKINGS

    def __post_init__(self) -> None:
        pairs = self.layer_bits.items() if isinstance(self.layer_bits, dict) else self.layer_bits
        if isinstance(pairs, list | tuple | type({}.items())):  # JSON gives lists of lists
            object.__setattr__(self, "layer_bits", tuple(
                tuple(p) if isinstance(p, list | tuple) else p for p in pairs))
        for name in ("method", "target", "weight_method"):  # a CLI Enum arrives as its value
            value = getattr(self, name)
            object.__setattr__(self, name, getattr(value, "value", value))
        skip = self.skip
        if isinstance(skip, str):  # "a*" is one pattern, not the patterns "a" and "*"
            object.__setattr__(self, "skip", (skip,))
        elif isinstance(skip, list | tuple | set | frozenset):
            object.__setattr__(self, "skip", tuple(skip))
        for name, value in RECIPES.get(self.recipe, {}).items():
            if self.weight_only and name in _ACTIVATION_SETTINGS:
                continue  # a recipe's activation parts do not apply without activations
            if getattr(self, name) == _DEFAULTS[name]:
                object.__setattr__(self, name, value)
        problems = _problems(self)
        if problems:
            raise UsageError("invalid QuantConfig: " + "; ".join(problems))

    @property
    def symmetric(self) -> bool:
        return self.target == "trt"

    @property
    def attention_bits(self) -> int:
        if self.attn_bits is not None:
            return self.attn_bits
        return 4 if self.lis or self.lis_qdq else self.a_bits

    @property
    def lis_octave_steps(self) -> int:
        return LIS_BASES[self.lis_base]

    def with_(self, **changes) -> QuantConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["skip"] = list(self.skip)
        d["layer_bits"] = [list(p) for p in self.layer_bits]
        d["attention_bits"] = self.attention_bits
        return d

    @classmethod
    def from_dict(cls, data: dict) -> QuantConfig:
        """A config from `to_dict()` output or a hand-written dict; unknown keys are an error."""
        if not isinstance(data, dict):
            raise UsageError(f"a QuantConfig or a dict is expected, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"attention_bits"})
        if unknown:
            raise UsageError(f"unknown QuantConfig fields {unknown} (known: {sorted(known)})")
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def coerce(cls, config: QuantConfig | dict | None) -> QuantConfig:
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        if isinstance(config, dict):
            return cls.from_dict(config)
        raise UsageError(f"config must be a QuantConfig or a dict, got {type(config).__name__} "
                         f"{config!r:.40}")


_BOOLS = ("quantize_patch_embed", "quantize_head", "quantize_attention", "pts", "lis", "lis_qdq",
          "ort_fusions", "reparam", "reparam_mlp", "bias_correction", "fisher",
          "weight_only", "smooth", "center")
_ACTIVATION_SETTINGS = ("method", "pts", "lis", "lis_qdq", "reparam", "reparam_mlp", "smooth",
                        "center")
_INTS = ("w_bits", "a_bits", "calib_size", "batch_size", "seed", "search_samples")


def _problems(cfg: QuantConfig) -> list[str]:
    """Every bad value of `cfg`, each naming its field (the CLI flag is the same name)."""
    out = []
    if cfg.method not in METHODS:
        out.append(f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    if cfg.recipe is not None and cfg.recipe not in RECIPES:
        out.append(f"unknown recipe {cfg.recipe!r}; choose one of {', '.join(RECIPES)}")
    if cfg.weight_method not in WEIGHT_METHODS:
        out.append(f"unknown weight_method {cfg.weight_method!r}; choose one of "
                   f"{', '.join(WEIGHT_METHODS)}")
    if cfg.lis is True and cfg.lis_qdq is True:
        out.append("lis and lis_qdq exclude each other (integer ops or their float emulation)")
    if cfg.lis_base not in LIS_BASES:
        out.append(f"unknown lis_base {cfg.lis_base!r}; choose one of {', '.join(LIS_BASES)}")
    if cfg.quantized_linear not in QUANTIZED_LINEAR:
        out.append(f"unknown quantized_linear {cfg.quantized_linear!r}; choose one of "
                   f"{', '.join(QUANTIZED_LINEAR)}")
    if cfg.ort_weights not in ORT_WEIGHTS:
        out.append(f"unknown ort_weights {cfg.ort_weights!r}; choose one of "
                   f"{', '.join(ORT_WEIGHTS)}")
    if cfg.target not in TARGETS:
        out.append(f"unknown target {cfg.target!r}; choose one of {', '.join(TARGETS)}")
    out += [f"{n} must be true or false, got {getattr(cfg, n)!r}" for n in _BOOLS
            if not isinstance(getattr(cfg, n), bool)]
    ints = [n for n in _INTS if not _is_int(getattr(cfg, n))]
    out += [f"{n} must be an integer, got {getattr(cfg, n)!r}" for n in ints]
    for name in ("w_bits", "a_bits", "attn_bits", "edge_bits"):
        v = getattr(cfg, name)
        if name not in ints and v is not None and (not _is_int(v) or not 2 <= v <= 8):
            out.append(f"{name.replace('_', '-')} must be between 2 and 8, got {v!r}")
    for name in ("calib_size", "batch_size", "search_samples"):
        if name not in ints and getattr(cfg, name) < 1:
            flag = name.replace("_", "-") + (" (--samples)" if name == "calib_size" else "")
            out.append(f"{flag} must be positive, got {getattr(cfg, name)}")
    if not _number_in(cfg.momentum, 0.0, 1.0, closed_low=False):
        out.append(f"momentum must be in (0, 1], got {cfg.momentum!r}")
    if not _number_in(cfg.percentile, 0.0, 0.5, closed_high=False):
        out.append(f"percentile is the tail mass clipped per side and must be in [0, 0.5), got "
                   f"{cfg.percentile!r} (1e-5 clips the top and bottom 0.001 %)")
    if cfg.split_shortcut is not None and not _number_in(cfg.split_shortcut, 1.0, 1e9):
        out.append(f"split-shortcut is a range ratio >= 1, got {cfg.split_shortcut!r}")
    out += _weight_only_problems(cfg) + _mixed_problems(cfg)
    if not isinstance(cfg.skip, tuple) or not all(isinstance(p, str) and p for p in cfg.skip):
        out.append(f"skip must be node-name glob strings, got {cfg.skip!r}")
    return out


def _weight_only_problems(cfg: QuantConfig) -> list[str]:
    """weight_only keeps every activation float: the activation settings contradict it."""
    if cfg.weight_only is not True:
        return []
    out = [f"weight-only keeps activations float; drop {n.replace('_', '-')}"
           for n in _ACTIVATION_SETTINGS[1:] if getattr(cfg, n) is True]
    if cfg.target == "trt":
        out.append("weight-only is for target ort (MatMulNBits); TensorRT takes int8 or "
                   "block-quantized int4 Q/DQ")
    if cfg.a_bits != 8 or cfg.attn_bits is not None:
        out.append("weight-only keeps activations float; drop a-bits/attn-bits")
    return out


def _mixed_problems(cfg: QuantConfig) -> list[str]:
    out = []
    if cfg.target_sqnr is not None and not _number_in(cfg.target_sqnr, 0.0, 200.0):
        out.append(f"target-sqnr is in dB, 0 to 200, got {cfg.target_sqnr!r}")
    if cfg.max_drop is not None and not _number_in(cfg.max_drop, 0.0, 100.0):
        out.append(f"max-drop is a top-1 disagreement in percent, 0 to 100, got {cfg.max_drop!r}")
    if cfg.rank_by not in RANKINGS:
        out.append(f"unknown rank_by {cfg.rank_by!r}; choose one of {', '.join(RANKINGS)}")
    ok = isinstance(cfg.layer_bits, tuple) and all(
        isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) and p[0]
        and _is_int(p[1]) and 2 <= p[1] <= 8 for p in cfg.layer_bits)
    if not ok:
        out.append(f"layer_bits must be (node glob, bits 2-8) pairs, got {cfg.layer_bits!r}")
    return out


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number_in(v, lo: float, hi: float, *, closed_low: bool = True,
               closed_high: bool = True) -> bool:
    if isinstance(v, bool) or not isinstance(v, int | float) or v != v:
        return False
    return (lo <= v if closed_low else lo < v) and (v <= hi if closed_high else v < hi)


_DEFAULTS = {f.name: f.default for f in fields(QuantConfig)}
