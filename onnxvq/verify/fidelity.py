"""Quick fidelity and speed figures for a quantized model next to its FP32 original."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from onnxvq.core.metrics import Running, sample_cosines, top1_agreement
from onnxvq.core.runtime import make_session, random_inputs


@dataclass(frozen=True)
class Fidelity:
    samples: int
    cosine: float  # mean over samples of cos(fp32, quant) of the first output
    sqnr_db: float  # 10·log10(Σ fp32² / Σ (fp32 − quant)²)
    max_abs_diff: float
    top1_agreement: float  # argmax of the first output, for classifiers


def fidelity(fp32: onnx.ModelProto | str, quant: onnx.ModelProto | str,
             feeds: Iterable[Mapping[str, np.ndarray]]) -> Fidelity:
    a_sess, b_sess = make_session(fp32), make_session(quant)
    out = a_sess.get_outputs()[0].name
    total, cos, agree = Running(), [], 0
    for f in feeds:
        a = a_sess.run([out], dict(f))[0]
        b = b_sess.run([out], dict(f))[0]
        total.update(a, b)
        cos.extend(sample_cosines(a, b))
        agree += top1_agreement(a, b)
    n = len(cos)
    return Fidelity(n, float(np.mean(cos)), total.sqnr_db, total.max_abs, agree / max(n, 1))


def latency_ms(model: onnx.ModelProto | str, *, batch: int = 1, threads: int = 2,
               runs: int = 20, warmup: int = 3) -> float:
    """Median wall time of one run in ONNX Runtime's CPU provider."""
    return timed_runs(model, batch=batch, threads=threads, runs=runs, warmup=warmup)[0]


def timed_runs(model: onnx.ModelProto | str, *, batch: int = 1, threads: int = 2, runs: int = 20,
               warmup: int = 3, custom_ops: bool = True, slow_s: float | None = None,
               slow_runs: int = 5) -> tuple[float, int]:
    """(median ms, runs timed). With `slow_s`, a model whose first run takes longer gets no warmup
    and at most `slow_runs` timed runs (for the slow local-function variants of benchmarks)."""
    sess = make_session(model, threads=threads, custom_ops=custom_ops)
    feeds = random_inputs(sess, batch=batch)
    if slow_s is not None:
        t0 = time.perf_counter()
        sess.run(None, feeds)
        if time.perf_counter() - t0 > slow_s:
            runs, warmup = min(runs, slow_runs), 0
    for _ in range(warmup):
        sess.run(None, feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3), runs
