"""The optional FP32 rewrites `quantize` runs on its one graph between recognition and planning:
shortcut splitting, SmoothQuant, RepQ-ViT. Each returns the model and structure unchanged when off;
its module is imported only when it runs."""

from __future__ import annotations

import logging

from onnxvq.core.config import QuantConfig
from onnxvq.core.graph import infer_shapes_into
from onnxvq.quantizer.calibration import calibration_feeds
from onnxvq.recognise.model import recognise

log = logging.getLogger(__name__)


def split_shortcuts_stage(graph, canonical, structure, spec, cfg: QuantConfig):
    """Q-Diffusion's shortcut splitting (`--split-shortcut RATIO`, ranges measured on the
    calibration data), before planning so that each part gets its own activation site."""
    if cfg.split_shortcut is None:
        return canonical, structure, []
    from onnxvq.quantizer.shortcut import split_shortcuts

    feeds = calibration_feeds(canonical, spec, cfg, None, cfg.batch_size, None)[1]()
    canonical, split = split_shortcuts(graph, canonical, feeds, cfg.split_shortcut)
    if split.applied:
        infer_shapes_into(graph, canonical)
        structure = recognise(graph)
    return canonical, structure, [split]


def smooth_stage(graph, canonical, structure, spec, cfg, validate):
    """SmoothQuant (`--smooth`) on the same graph: the new FP32 model, its structure, the pass
    results; unchanged when off."""
    if not (cfg.smooth and structure.is_vit):
        if cfg.smooth:
            log.warning("--smooth did nothing: no transformer blocks recognised")
        return canonical, structure, []
    from onnxvq.quantizer.smooth import smooth

    done = smooth(graph, canonical, structure, spec, cfg, validate)
    infer_shapes_into(graph, done.model)
    return done.model, recognise(graph), done.passes


def reparameterize_stage(graph, canonical, structure, spec, cfg, validate):
    """RepQ-ViT (`--reparam`/`--reparam-mlp`) on the same graph: the new FP32 model, its
    structure, the site qparams it fixes and its pass results; unchanged when off."""
    if not ((cfg.reparam or cfg.reparam_mlp or cfg.center and cfg.symmetric)
            and structure.is_vit):
        return canonical, structure, {}, []
    from onnxvq.quantizer.reparam import reparameterize

    rep = reparameterize(graph, canonical, structure, spec, cfg, validate)
    infer_shapes_into(graph, rep.model)
    return rep.model, recognise(graph), rep.site_qparams, rep.passes


def fp32_rewrites(graph, canonical, structure, spec, cfg: QuantConfig, validate):
    """The three in order on the same graph: the FP32 model, its structure, the site qparams
    RepQ-ViT fixes and the pass results of all three."""
    canonical, structure, split = split_shortcuts_stage(graph, canonical, structure, spec, cfg)
    canonical, structure, smoothed = smooth_stage(graph, canonical, structure, spec, cfg,
                                                  validate)
    canonical, structure, overrides, reparam = reparameterize_stage(graph, canonical, structure,
                                                                    spec, cfg, validate)
    return canonical, structure, overrides, [*split, *smoothed, *reparam]
