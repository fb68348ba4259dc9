"""Compare onnxvq's int8 models with ONNX Runtime's quantize_static: speed, memory, size, accuracy.

    python benchmarks/bench_quantize.py [--quick] [--only latency|calib|memory|accuracy]
                                        [--threads 2]

Sections (all by default; `--only` runs one and merges it into the existing JSON):
- latency: FP32, onnxvq int8 (W8/A8 MinMax, target ort) and quantize_static (QDQ, per-channel,
  MinMax, uint8 activations / int8 weights) on DeiT-S (timm vit_small_patch16_224, random weights)
  and the two trained CIFAR-10 models; median `session.run` time, the models' runs interleaved so
  that load from other processes hits them alike. Also the model file sizes and Q/DQ node counts.
- calib: calibration wall time and peak RSS of each tool, MinMax and Percentile, on vit_cifar10,
  each run in a fresh subprocess (peak RSS = the worker's own VmHWM), and the floor: "FP32
  forward only" (the same images, preprocessing, prefetch thread and batch as onnxvq, one FP32
  forward per batch, nothing else). Every row also reports its time inside
  `InferenceSession.run` (its forward passes; quantize_static's share of its run).
- memory: peak RSS and wall time of quantizing DeiT-S (224 px, MinMax) with onnxvq at 16, 64
  and 128 images, quantize_static and NNCF (the `[bench]` extra) at 64, fresh subprocess each.
- accuracy: top-1 on cifar10/val and top-1 agreement with FP32 for every onnxvq method and
  quantize_static.
Results: rich tables on stdout, JSON in benchmarks/results/quantize.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper
from rich import box
from rich.console import Console
from rich.table import Table

from onnxvq.calibrate import batches, open_source, resolve_preprocess
from onnxvq.calibrate.data import ImageFolder, strided
from onnxvq.core.config import METHODS, QuantConfig
from onnxvq.core.runtime import make_session

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data").resolve()
OUT = Path(__file__).parent / "results" / "quantize.json"
BLOCK = 5  # timed runs per turn in the latency interleaving
REAL = {"vit_cifar10": "cifar10-vit", "cct_cifar10": "cifar10"}  # model -> preprocessing preset
console = Console(width=140)


def table(title: str, *columns: str) -> Table:
    """A Markdown-boxed table (pastes into the README as is); first column left, others right."""
    t = Table(title=title, box=box.MARKDOWN)
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i == 0 else "right")
    return t


def op_type_table(title: str, breakdown: dict[str, dict], min_ms: float) -> Table:
    """Per-op-type profile of several models side by side (`{label: {"total_ms": ..,
    "op_types": {op: [ms, nodes]}}}`), the ops by their largest time, those under `min_ms`
    everywhere left out, then the totals."""
    def most(op: str) -> float:
        return max(v["op_types"].get(op, [0])[0] for v in breakdown.values())

    t = table(title, "op type", *breakdown)
    ops = {op for v in breakdown.values() for op in v["op_types"]}
    for op in sorted(ops, key=lambda o: -most(o)):
        if most(op) >= min_ms:
            t.add_row(op, *[f"{v['op_types'][op][0]:.1f} ({v['op_types'][op][1]})"
                            if op in v["op_types"] else "" for v in breakdown.values()])
    t.add_row("total", *[f"{v['total_ms']:.1f}" for v in breakdown.values()])
    return t


def model_path(name: str) -> Path:
    if name == "deit_s":
        from onnxvq.models.corpus import ensure_export

        return ensure_export("vit_small_patch16_224", "torchscript17")
    return DATA / "models" / f"{name}.onnx"


def preset_of(name: str) -> str:
    return REAL.get(name, "imagenet")


@functools.cache
def calib_dir(n: int, tmp: Path) -> Path:
    """The calibration folder for n images; above its 1,000, a folder of links to all of them plus
    the first n - 1,000 of an evenly strided pass repeated (same classes, same preprocessing).
    Built once per process: a calib worker builds it before its clock starts (the links are the
    benchmark's own setup, 0.1-0.4 s at 1,024 that every tool's time used to include)."""
    src = DATA / "cifar10" / "calib"
    files = sorted(p.relative_to(src) for p in src.rglob("*.jpg"))
    if n <= len(files):
        return src
    out = tmp / f"calib{n}"
    if not out.exists():
        for rel in files:
            (out / rel.parent).mkdir(parents=True, exist_ok=True)
            (out / rel).symlink_to(src / rel)
        for i in strided(len(files), n - len(files)):
            rel = files[i]
            (out / rel.parent / f"zz_repeat_{rel.name}").symlink_to(src / rel)
    return out


# ---- quantizers -------------------------------------------------------------------------------

def quantize_onnxvq(name: str, method: str, n: int, out: Path, tmp: Path) -> Path:
    from onnxvq.quantizer.run import quantize

    cfg = QuantConfig(method=method, calib_size=n)
    result = quantize(str(model_path(name)), calib_dir(n, tmp), cfg,
                      preprocess=resolve_preprocess(preset_of(name)))
    return result.save(out)


def quantize_ort(name: str, method: str, n: int, out: Path, tmp: Path) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self, feeds):
            self.feeds = feeds

        def get_next(self):
            return next(self.feeds, None)

    path = model_path(name)
    inp = onnx.load(str(path), load_external_data=False).graph.input[0]
    shape = [d.dim_value or "N" for d in inp.type.tensor_type.shape.dim]
    source = open_source(calib_dir(n, tmp), resolve_preprocess(preset_of(name)), n, shape)
    calib_method = {"minmax": CalibrationMethod.MinMax,
                    "percentile": CalibrationMethod.Percentile}[method]
    quantize_static(str(path), str(out), Reader(batches(source, 16, inp.name)),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=calib_method)
    return out


def quantize_nncf(name: str, method: str, n: int, out: Path, tmp: Path) -> Path:
    """NNCF's ONNX PTQ, transformer preset (the `[bench]` extra); `method` is NNCF's own."""
    import nncf

    model = onnx.load(str(model_path(name)))
    inp = model.graph.input[0]
    shape = [d.dim_value or "N" for d in inp.type.tensor_type.shape.dim]
    source = open_source(calib_dir(n, tmp), resolve_preprocess(preset_of(name)), n, shape)
    items = list(batches(source, 1, inp.name))  # one sample per item: subset_size counts items
    q = nncf.quantize(model, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER,
                      subset_size=n)
    onnx.save(q, str(out))
    return out


def forward_fp32(name: str, method: str, n: int, out: Path, tmp: Path) -> None:
    """The floor of any calibration (`method` is ignored, nothing is written): every image decoded
    and preprocessed once (the same preset, and the same prefetch thread as onnxvq) and one FP32
    forward per batch at onnxvq's calibration batch size, in a lean session like onnxvq's, only
    the model's own output fetched."""
    from onnxvq.calibrate.prefetch import prefetched

    model = onnx.load(str(model_path(name)))
    inp = model.graph.input[0]
    shape = [d.dim_value or "N" for d in inp.type.tensor_type.shape.dim]
    source = open_source(calib_dir(n, tmp), resolve_preprocess(preset_of(name)), n, shape)
    sess = make_session(model, lean=True)
    outputs = [sess.get_outputs()[0].name]
    for feeds in prefetched(batches(source, QuantConfig().batch_size, inp.name)):
        sess.run(outputs, feeds)


TOOLS = {"onnxvq": quantize_onnxvq, "ort": quantize_ort, "nncf": quantize_nncf,
         "fp32": forward_fp32}
TOOL_NAMES = {"onnxvq": "onnxvq", "ort": "quantize_static", "nncf": "NNCF",
              "fp32": "FP32 forward only"}


class Models:
    """Quantized models built once per run, shared by the sections, in a temporary folder."""

    def __init__(self, tmp: Path):
        self.tmp, self.built = tmp, {}

    def get(self, name: str, tool: str, method: str, n: int) -> Path:
        key = (name, tool, method, n)
        if key not in self.built:
            out = self.tmp / f"{name}.{tool}.{method}.{n}.onnx"
            t0 = time.perf_counter()
            self.built[key] = TOOLS[tool](name, method, n, out, self.tmp)
            console.log(f"quantized {name} with {tool} {method} on {n} images "
                        f"in {time.perf_counter() - t0:.1f} s")
        return self.built[key]


# ---- latency and sizes ------------------------------------------------------------------------

def real_batch(sess: ort.InferenceSession, name: str, batch: int) -> np.ndarray:
    """The first `batch` of an evenly strided pick of calibration images, preprocessed."""
    source = open_source(DATA / "cifar10" / "calib", resolve_preprocess(preset_of(name)), batch,
                         ["N", *sess.get_inputs()[0].shape[1:]])
    return next(batches(source, batch, "x"))["x"]


def interleaved_latency(name: str, paths: dict[str, Path], batch: int, args) -> dict:
    """Median and minimum ms per run of each model on real images. The models take turns in
    blocks of `BLOCK` timed runs, so drifting load is shared; each block starts with an untimed
    run, which absorbs the previous session's thread pool still spinning."""
    sessions = {k: make_session(p, threads=args.threads) for k, p in paths.items()}
    x = real_batch(next(iter(sessions.values())), name, batch)
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    for k, s in sessions.items():
        for _ in range(args.warmup):
            s.run(None, feeds[k])
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(max(1, args.runs // BLOCK)):
        for k, s in sessions.items():
            s.run(None, feeds[k])
            for _ in range(BLOCK):
                t0 = time.perf_counter()
                s.run(None, feeds[k])
                times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: (float(np.median(v)), float(np.min(v))) for k, v in times.items()}


def qdq_counts(path: Path) -> dict[str, int]:
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    return {"Q": ops.count("QuantizeLinear"), "DQ": ops.count("DequantizeLinear")}


def run_latency(models: Models, args) -> dict:
    rows, sizes = [], []
    for name in ("deit_s", *REAL):
        n = args.deit_calib if name == "deit_s" else args.calib
        paths = {"fp32": model_path(name), "onnxvq": models.get(name, "onnxvq", "minmax", n),
                 "ort": models.get(name, "ort", "minmax", n)}
        for batch in (1, 8):
            ms = interleaved_latency(name, paths, batch, args)
            row = {"model": name, "batch": batch, "calib_images": n}
            for k, (med, low) in ms.items():
                row.update({f"{k}_ms": med, f"{k}_min_ms": low})
            for k in ("onnxvq", "ort"):
                row.update({f"{k}_x": ms[k][0] / ms["fp32"][0],
                            f"{k}_min_x": ms[k][1] / ms["fp32"][1]})
            rows.append(row)
        sizes.append({"model": name, **{f"{k}_mb": p.stat().st_size / 2**20
                                         for k, p in paths.items()},
                      **{f"{k}_{q}": c for k in ("onnxvq", "ort")
                         for q, c in qdq_counts(paths[k]).items()}})
    deit8 = next(r for r in rows if r["model"] == "deit_s" and r["batch"] == 8)
    target = {"metric": "onnxvq int8 / FP32 at batch 8 on DeiT-S", "limit": 0.6,
              "value": deit8["onnxvq_x"], "met": deit8["onnxvq_x"] <= 0.6}
    return {"runs": args.runs, "warmup": args.warmup, "threads": args.threads, "rows": rows,
            "sizes": sizes, "target": target}


def show_latency(res: dict) -> None:
    t = table(f"Latency (ms), ORT CPU, {res['threads']} threads, median of {res['runs']} runs; "
              "min: ratio of the fastest runs", "model", "batch", "FP32",
              "onnxvq int8", "x FP32", "min", "quantize_static", "x FP32", "min")
    for r in res["rows"]:
        t.add_row(r["model"], str(r["batch"]), f"{r['fp32_ms']:.2f}", f"{r['onnxvq_ms']:.2f}",
                  f"{r['onnxvq_x']:.2f}", f"{r['onnxvq_min_x']:.2f}", f"{r['ort_ms']:.2f}",
                  f"{r['ort_x']:.2f}", f"{r['ort_min_x']:.2f}")
    console.print(t)
    tg = res["target"]
    console.print(f"Target {tg['metric']} <= {tg['limit']}: {tg['value']:.2f} -> "
                  f"{'met' if tg['met'] else 'NOT met'}")
    s = table("Model files (MiB) and Q/DQ node counts", "model", "FP32", "onnxvq",
              "quantize_static", "onnxvq Q/DQ", "quantize_static Q/DQ")
    for r in res["sizes"]:
        s.add_row(r["model"], f"{r['fp32_mb']:.2f}", f"{r['onnxvq_mb']:.2f}", f"{r['ort_mb']:.2f}",
                  f"{r['onnxvq_Q']}/{r['onnxvq_DQ']}", f"{r['ort_Q']}/{r['ort_DQ']}")
    console.print(s)


# ---- calibration cost (one subprocess per run) ------------------------------------------------

def vm_kib(field: str) -> int:
    """VmRSS/VmHWM of this process. Not ru_maxrss: Linux carries that over fork+exec from the
    parent, so a child of a big parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(spec: str) -> None:
    """Child process: one quantization; prints a JSON line with wall time and peak RSS."""
    job = json.loads(spec)
    logging.basicConfig(level=logging.ERROR)
    base = vm_kib("VmRSS")
    forward = timed_session_runs()
    with tempfile.TemporaryDirectory() as tmp:
        calib_dir(job["n"], Path(tmp))
        t0, c0 = time.perf_counter(), cpu_seconds()
        TOOLS[job["tool"]](job["model"], job["method"], job["n"], Path(tmp) / "q.onnx",
                           Path(tmp))
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    print(json.dumps({**job, "seconds": wall, "cpu_seconds": cpu, "run_seconds": forward[0],
                      "base_rss_mb": base / 1024, "peak_rss_mb": vm_kib("VmHWM") / 1024}))


def timed_session_runs() -> list[float]:
    """Time every `InferenceSession.run` of this process from now on (the forward passes of a
    calibration, whichever tool opens the session): the returned list's one item is the sum."""
    spent, run = [0.0], ort.InferenceSession.run

    def timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return run(self, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t0

    ort.InferenceSession.run = timed
    return spent


def cpu_seconds() -> float:
    """User + system CPU time of this process, all its threads: what other jobs on a shared
    machine cannot inflate (wall time is the measure; this is its load-independent companion)."""
    t = os.times()
    return t.user + t.system


def calib_row(model: str, tool: str, method: str, n: int) -> dict:
    """One quantization in a fresh subprocess: its wall time and peak RSS."""
    spec = json.dumps({"model": model, "tool": tool, "method": method, "n": n})
    proc = subprocess.run([sys.executable, __file__, "--_worker", spec],
                          capture_output=True, text=True)
    if proc.returncode == 0:
        row = json.loads(proc.stdout.strip().splitlines()[-1])
    else:  # e.g. killed for memory, or NNCF not installed: keep the other rows
        err = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        row = {**json.loads(spec), "error": err}
    secs = row.get("seconds")
    console.log(f"calibrated {model} {tool} {method} {n}: "
                + ("failed" if secs is None else f"{secs:.1f} s, {row['peak_rss_mb']:.0f} MiB"))
    return row


def run_calib(args) -> dict:
    """Each (size, method) runs onnxvq then quantize_static, `--repeat` times in turn (so that
    load from other jobs hits both alike); a row keeps every run and the median wall time."""
    rows = []
    for n in args.calib_sizes:
        for method in args.calib_methods:
            # the FP32 floor does not depend on the method: it runs with the first one
            floor = ("fp32",) if method == args.calib_methods[0] else ()
            runs = {tool: [] for tool in ("onnxvq", "ort", *floor)}
            for _ in range(args.repeat):
                for tool in runs:
                    runs[tool].append(calib_row("vit_cifar10", tool, method, n))
            rows += [_median_row(r) for r in runs.values()]
    return {"model": "vit_cifar10", "rows": rows, "repeat": args.repeat,
            "note": "1,024 = all 1,000 calib images + 24 of them repeated (evenly strided)"}


def _median_row(runs: list[dict]) -> dict:
    ok = sorted((r for r in runs if "error" not in r), key=lambda r: r["seconds"])
    if not ok:
        return runs[-1]
    row = dict(ok[(len(ok) - 1) // 2])  # the lower median: a run that really happened
    if len(runs) > 1:
        row["runs_seconds"] = [round(r["seconds"], 3) for r in ok]
        row["runs_cpu_seconds"] = [round(r["cpu_seconds"], 3) for r in ok]
        row["runs_run_seconds"] = [round(r.get("run_seconds", 0.0), 3) for r in ok]
    return row


def run_memory(args) -> dict:
    """Peak RSS of a whole DeiT-S quantization (224 px, minmax): every tool at `deit_calib`
    images, onnxvq also at a quarter and twice that (flat in the number of images)."""
    n = args.deit_calib
    runs = [("onnxvq", n // 4), ("onnxvq", n), ("onnxvq", 2 * n), ("ort", n), ("nncf", n)]
    return {"model": "deit_s", "rows": [calib_row("deit_s", tool, "minmax", k)
                                        for tool, k in runs]}


def show_calib(res: dict) -> None:
    t = table(f"Calibration + quantization on {res['model']} (fresh process per run)", "tool",
              "method", "images", "wall s", "CPU s", "session.run s", "peak RSS MiB",
              "RSS after imports MiB")
    # wall: the run of median wall time; CPU: the median over the runs (each in its own process);
    # session.run: that run's time inside InferenceSession.run (its forward passes)
    for r in res["rows"]:
        tool = TOOL_NAMES.get(r["tool"], r["tool"])
        method = "-" if r["tool"] == "fp32" else r["method"]
        if "error" in r:
            t.add_row(tool, method, str(r["n"]), "failed", r["error"][:40], "", "", "")
            continue
        cpus = r.get("runs_cpu_seconds") or ([r["cpu_seconds"]] if "cpu_seconds" in r else [])
        cpu = f"{sorted(cpus)[(len(cpus) - 1) // 2]:.2f}" if cpus else ""  # lower median
        fwd = f"{r['run_seconds']:.2f}" if "run_seconds" in r else ""
        t.add_row(tool, method, str(r["n"]), f"{r['seconds']:.2f}", cpu, fwd,
                  f"{r['peak_rss_mb']:.0f}", f"{r['base_rss_mb']:.0f}")
    console.print(t)
    show_floor(res)


def show_floor(res: dict) -> None:
    """quantize_static / onnxvq per size and method, against the FP32 floor of the same size:
    the time 3x needs, and each tool's wall time in units of the floor's."""
    ok = {(r["tool"], r["method"], r["n"]): r for r in res["rows"] if "error" not in r}
    floors = {n: r["seconds"] for (tool, _, n), r in ok.items() if tool == "fp32"}
    t = table("Against the floor (wall s; x floor = wall / FP32 forward only's)", "method",
              "images", "quantize_static / onnxvq", "3x needs onnxvq <=", "onnxvq x floor",
              "quantize_static x floor")
    for (tool, method, n), r in ok.items():
        ort_row = ok.get(("ort", method, n))
        if tool != "onnxvq" or ort_row is None:
            continue
        floor = floors.get(n)
        t.add_row(method, str(n), f"{ort_row['seconds'] / r['seconds']:.2f}x",
                  f"{ort_row['seconds'] / 3:.2f}",
                  f"{r['seconds'] / floor:.2f}" if floor else "",
                  f"{ort_row['seconds'] / floor:.2f}" if floor else "")
    console.print(t)


def show_memory(res: dict) -> None:
    t = table(f"Quantizing {res['model']} (minmax, fresh process per run)", "tool", "images",
              "wall s", "s / image", "peak RSS MiB")
    for r in res["rows"]:
        if "error" in r:
            t.add_row(r["tool"], str(r["n"]), "failed", r["error"][:40], "")
            continue
        t.add_row(r["tool"], str(r["n"]), f"{r['seconds']:.1f}", f"{r['seconds'] / r['n']:.2f}",
                  f"{r['peak_rss_mb']:.0f}")
    console.print(t)


# ---- accuracy ---------------------------------------------------------------------------------

def predictions(path: Path, x: np.ndarray, threads: int, batch: int = 64) -> np.ndarray:
    sess = make_session(path, threads=threads)
    name, out = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    return np.concatenate([sess.run([out], {name: x[i:i + batch]})[0].argmax(-1)
                           for i in range(0, len(x), batch)])


def run_accuracy(models: Models, args) -> dict:
    rows = []
    for name in REAL:
        val = ImageFolder(DATA / "cifar10" / "val", resolve_preprocess(preset_of(name)),
                          args.val)
        x = np.concatenate(list(val.chunks()))
        ref = predictions(model_path(name), x, args.threads)
        variants = [("FP32", model_path(name))]
        variants += [(f"onnxvq {m}", models.get(name, "onnxvq", m, args.calib)) for m in METHODS]
        variants.append(("quantize_static minmax", models.get(name, "ort", "minmax", args.calib)))
        for label, path in variants:
            pred = ref if label == "FP32" else predictions(path, x, args.threads)
            rows.append({"model": name, "variant": label, "top1": float((pred == val.labels)
                                                                         .mean()),
                         "agreement": float((pred == ref).mean())})
    return {"val_images": args.val or 2000, "calib_images": args.calib, "rows": rows}


def show_accuracy(res: dict) -> None:
    t = table(f"Top-1 on cifar10/val ({res['val_images']} images), {res['calib_images']} "
              "calibration images", "model", "variant", "top-1 %", "agreement with FP32 %")
    for r in res["rows"]:
        t.add_row(r["model"], r["variant"], f"{100 * r['top1']:.2f}",
                  f"{100 * r['agreement']:.2f}")
    console.print(t)


# ---- driver -----------------------------------------------------------------------------------

def prime_denormals() -> None:
    """Open a tiny session with denormal-as-zero before any other. ONNX Runtime applies that option
    to the calling thread only from the process's first session; the first one onnxvq.quantizer.run
    opens (graphsurgeon's constant folding) lacks it, which left the CCT's FP32 model ~8x slower."""
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "primer", [x], [y])
    make_session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                   ir_version=10), custom_ops=False)


SECTIONS = {"latency": (run_latency, show_latency), "calib": (run_calib, show_calib),
            "memory": (run_memory, show_memory), "accuracy": (run_accuracy, show_accuracy)}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer runs and images (smoke test)")
    p.add_argument("--only", choices=list(SECTIONS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, help=f"default {OUT} ({OUT.stem}-quick.json with --quick)")
    p.add_argument("--repeat", type=int, default=1, help="calib: runs per tool (the median)")
    p.add_argument("--calib-methods", default="minmax,percentile",
                   help="calib: the methods (comma-separated); rows of the others are kept")
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.runs, args.warmup = (5, 1) if args.quick else (30, 3)
    args.deit_calib = 16 if args.quick else 64
    args.calib = 64 if args.quick else 256
    args.calib_sizes = (64, 128) if args.quick else (256, 1024)
    args.calib_methods = tuple(args.calib_methods.split(","))
    args.val = 400 if args.quick else None  # None: all 2,000
    args.out = args.out or (OUT.with_name(f"{OUT.stem}-quick.json") if args.quick else OUT)
    return args


def main() -> None:
    args = parse_args()
    if args._worker:
        return worker(args._worker)
    logging.basicConfig(level=logging.ERROR)  # quantize_static logs a warning per tensor
    prime_denormals()
    payload = json.loads(args.out.read_text()) if args.out.exists() and args.only else {}
    payload.update(onnxruntime=ort.__version__, machine=platform.processor() or
                   platform.machine(), cpus=os.cpu_count())
    with tempfile.TemporaryDirectory() as tmp:
        models = Models(Path(tmp))
        for name, (run, show) in SECTIONS.items():
            if args.only not in (None, name):
                continue
            load0, t0 = os.getloadavg()[0], time.perf_counter()
            res = run(args) if name in ("calib", "memory") else run(models, args)
            res.update(quick=args.quick, seconds=round(time.perf_counter() - t0, 1),
                       loadavg_1min=[load0, os.getloadavg()[0]])
            show(res)
            console.print(f"[dim]{name}: {res['seconds']} s, 1-min load average "
                          f"{load0:.2f} -> {os.getloadavg()[0]:.2f}[/dim]")
            if name == "calib":  # a run of some methods keeps the earlier rows of the others
                res["rows"] += [r for r in payload.get("calib", {}).get("rows", [])
                                if r["method"] not in args.calib_methods]
            payload[name] = res
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
