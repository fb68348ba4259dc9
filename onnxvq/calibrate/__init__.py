"""Calibration: input data sources, range observers, and one-session statistics collection."""

from onnxvq.calibrate.collect import collect, expose
from onnxvq.calibrate.data import (
    ImageFolder,
    NoiseSource,
    Source,
    TensorSource,
    batches,
    open_source,
)
from onnxvq.calibrate.histogram import StreamingHistogram
from onnxvq.calibrate.observers import (
    EmaObserver,
    HistogramObserver,
    MinMaxObserver,
    Observer,
    OmseObserver,
    PercentileObserver,
    PerChannelMinMax,
    make_observer,
    weight_qparams,
)
from onnxvq.calibrate.preprocess import (
    PRESETS,
    Preprocess,
    load_preprocess_config,
    resolve_preprocess,
)
from onnxvq.calibrate.pts import (
    PtsErrorObserver,
    PtsObserver,
    pts_candidate_scales,
    pts_layer_qparams,
    pts_shifts,
)
from onnxvq.calibrate.quant import fake_quant, qparams_from_range, qrange

__all__ = [
    "PRESETS", "EmaObserver", "HistogramObserver", "ImageFolder", "MinMaxObserver", "NoiseSource",
    "Observer", "OmseObserver", "PerChannelMinMax", "PercentileObserver", "Preprocess",
    "PtsErrorObserver", "PtsObserver", "Source", "StreamingHistogram", "TensorSource", "batches",
    "collect", "expose", "fake_quant", "load_preprocess_config", "make_observer", "open_source",
    "pts_candidate_scales", "pts_layer_qparams", "pts_shifts", "qparams_from_range", "qrange",
    "resolve_preprocess", "weight_qparams",
]
