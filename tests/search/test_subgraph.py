"""Search speed-ups that must not change results: tails of a block, the candidate walk."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxvq.calibrate.blockgraph import ActParam, QuantBlock, WeightParam, block_bounds, slice_block
from onnxvq.calibrate.collect import expose
from onnxvq.calibrate.search import _param_inputs
from onnxvq.calibrate.search_walk import place, walk
from onnxvq.calibrate.subgraph import Tail, run_batched
from onnxvq.core.config import QuantConfig
from onnxvq.core.graph import to_graph
from onnxvq.core.runtime import make_session
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.quantizer.placement import plan
from onnxvq.quantizer.run import quantize
from onnxvq.recognise.model import recognise_model


@pytest.fixture(scope="module")
def block():
    tiny = build_tiny_vit(TinyViTConfig(depth=1))
    model = quantize(tiny, None, QuantConfig(calib_size=2, batch_size=2)).canonical
    structure = recognise_model(model)
    the_plan = plan(to_graph(model), structure, QuantConfig(w_bits=4, a_bits=4))
    b_in, b_out = block_bounds(structure.blocks[0], model)
    sliced = slice_block(model, b_in, b_out)
    names = {n.name for n in sliced.graph.node}
    acts = [ActParam(s.tensor, s.consumers, 4, False, False, s.role)
            for s in the_plan.activations if any(c in names for c in s.consumers)]
    weights = [WeightParam(w.node, w.weight, w.axis, 4) for w in the_plan.weights
               if w.node in names]
    img = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    x = make_session(expose(model, [b_in])).run(None, {model.graph.input[0].name: img})[0]
    return QuantBlock(sliced, acts, weights), x


def _feeds(qb, x):
    rng = np.random.default_rng(1)
    acts = {a.tensor: (float(rng.uniform(0.05, 0.2)), float(rng.integers(0, 16))) for a in qb.acts}
    ws = {w.node: np.abs(qb.float_weights[w.node]).max(0) / 7 * rng.uniform(0.6, 1.0)
          for w in qb.weights}
    return qb.feeds(acts, ws)


def test_every_tail_equals_the_whole_block(block):
    """Frontier from the head, tail on it (in chunks of 2 of 5 samples): the block output equals
    the whole fake-quantized block's, and a tail runs fewer nodes than the block."""
    qb, x = block
    feeds = _feeds(qb, x)
    want = make_session(qb.model).run([qb.output], {**feeds, qb.input: x})[0]
    typed = onnx.shape_inference.infer_shapes(qb.model)
    inputs = [i.name for i in typed.graph.input]
    sizes = []
    for p in (*qb.acts, *qb.weights):
        tail = Tail(typed, _param_inputs(p), [qb.output])
        head = Tail(typed, inputs, tail.frontier)
        front = run_batched(head.session, head.outputs,
                            {k: feeds[k] for k in head.feeds if k != qb.input}, {qb.input: x},
                            len(x), 2)
        if qb.input in tail.feeds:
            front[qb.input] = x
        got = run_batched(tail.session, tail.outputs,
                          {k: feeds[k] for k in tail.feeds if k != qb.input}, front, len(x), 2)
        np.testing.assert_allclose(got[qb.output], want, rtol=1e-5, atol=1e-5)
        sizes.append(tail.nodes)
    assert max(sizes) < len(qb.model.graph.node) and min(sizes) < len(qb.model.graph.node) // 4


def test_walk_finds_the_minimum_of_a_unimodal_loss_from_the_current_choice():
    grid = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.42, 0.35, 0.3, 0.25, 0.2, 0.15]
    seen = []

    def score(_unit):
        seen.append(state[0])
        return (state[0] - 0.33) ** 2

    state = [None]
    cands, start = place(grid, 0.62, key=lambda c: c)
    assert cands[start] == 0.62 and cands[start - 1] == 0.7 and cands[start + 1] == 0.6
    best = walk(cands, start, lambda c: state.__setitem__(0, c), score, "u")
    assert best == 0.35 and state[0] == 0.35
    assert len(seen) == 7 and 1.0 not in seen  # 0.62 .. 0.35, then 0.3, 0.25: never the wide end
    seen.clear()
    cands, start = place(grid, 0.2, key=lambda c: c)  # already on the grid; optimum is wider
    assert start == 10 and walk(cands, start, lambda c: state.__setitem__(0, c), score,
                                "u") == 0.35
    assert 1.0 not in seen


def test_float_chain_matches_the_whole_model_and_holds_one_unit():
    """The search's float references, computed one block at a time from the previous block's
    float output, equal the whole model's tensors; only the last unit's output is kept."""
    from onnxvq.calibrate.search import FloatChain

    tiny = build_tiny_vit(TinyViTConfig(depth=2))
    model = quantize(tiny, None, QuantConfig(calib_size=2, batch_size=2)).canonical
    structure = recognise_model(model)
    bounds = [block_bounds(b, model) for b in structure.blocks]
    inp = model.graph.input[0].name
    img = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    chain = FloatChain(model, img)
    for b_in, b_out in bounds:
        inner = [n.output[0] for n in slice_block(model, b_in, b_out).graph.node][:3]
        got = chain.unit(b_in, b_out, inner)
        names = [b_in, b_out, *inner]
        whole = dict(zip(names, make_session(expose(model, names)).run(names, {inp: img}),
                         strict=True))
        for n in names:
            np.testing.assert_allclose(got[n], whole[n], rtol=1e-5, atol=1e-5)
        assert set(chain.known) == {inp, b_out}
    assert len(bounds) == 2 and bounds[0][1] == bounds[1][0]  # the second unit reused the first


def test_search_sessions_keep_no_arena(block):
    tail = Tail(onnx.shape_inference.infer_shapes(block[0].model),
                _param_inputs(block[0].acts[0]), [block[0].output])
    assert tail.session.get_session_options().enable_cpu_mem_arena is False
