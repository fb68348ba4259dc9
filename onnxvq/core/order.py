"""`tidy`: graphsurgeon's `cleanup().toposort()`, node for node, without its per-node recursion,
and `mark_tidy` for the local function bodies that are built clean and never edited after."""

from __future__ import annotations

import weakref

import onnx_graphsurgeon as gs

# Local functions built clean and sorted (com.onnxvq's, plugins/ops.py), by id: `tidy` skips them
_TIDY: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def mark_tidy(func: gs.Function) -> gs.Function:
    """Clean and sort `func` once, as `tidy` would, and let later `tidy` calls skip it: nothing
    edits a local function's body after it is added, and a second cleanup or (stable) sort is a
    no-op. Sorting the 24 com.onnxvq bodies on every pass took ~0.2 s of a vit_cifar10 run.
    The one cleanup and sort use `tidy`'s own walks (graphsurgeon's took ~0.2 s more, once per
    run, for the 24 bodies register_functions adds), its recursion only where they decline."""
    if not _cleaned(func):  # a body with subgraphs
        func.cleanup()
    nodes = _sorted_nodes(func.nodes)
    if nodes is None:
        func.toposort()
    else:
        func.nodes = nodes
    _TIDY[id(func)] = func
    return func


def tidy(graph: gs.Graph) -> gs.Graph:
    """`graph.cleanup().toposort()` (graph inputs kept), with the same result, faster: recursing
    only into the local functions `mark_tidy` did not mark, ordering the nodes with `_sorted_nodes`
    and re-sorting the function list only when it changed."""
    todo = [f for f in graph.functions if _TIDY.get(id(f)) is not f]
    for func in todo:  # the order graphsurgeon's own recursion uses: functions, then the graph
        func.cleanup()
    if not _cleaned(graph):  # subgraphs: graphsurgeon's own cleanup
        graph.cleanup(remove_unused_graph_inputs=False, recurse_functions=False)
    for func in todo:
        func.toposort()
    nodes = _sorted_nodes(graph.nodes)
    if nodes is None:  # subgraphs (or a broken graph): graphsurgeon's own sort, and its errors
        return graph.toposort(recurse_functions=False)
    graph.nodes = nodes
    # the function list's order depends only on the bodies, which nothing edits: sorted again
    # only when a function was added or removed (each sort walks every node once per function)
    seen = _SORTED_FUNCTIONS.get(id(graph))
    if seen is None or seen[0]() is not graph or seen[1] != [id(f) for f in graph.functions]:
        graph.toposort(recurse_functions=False, mode="functions")
        for key in [k for k, (ref, _) in _SORTED_FUNCTIONS.items() if ref() is None]:
            del _SORTED_FUNCTIONS[key]  # graphs gone
        _SORTED_FUNCTIONS[id(graph)] = (weakref.ref(graph), [id(f) for f in graph.functions])
    return graph


# id(graph) -> (the graph, its function list as `tidy` last sorted it); a graph's own attributes
# are not usable (graphsurgeon reads an unknown one as a call to a registered function)
_SORTED_FUNCTIONS: dict[int, tuple[weakref.ref, list[int]]] = {}


def _sorted_nodes(nodes: list[gs.Node]) -> list[gs.Node] | None:
    """graphsurgeon's node order, computed without its per-node recursion (most of a pass's
    time on a ViT): each node's level is one more than its producers' highest, levels are
    assigned in the same depth-first post-order, and the nodes are stably sorted by level.
    None (use graphsurgeon's) for a graph with subgraphs, a cycle or a producer outside it."""
    if any(isinstance(v, gs.Graph) for n in nodes for v in n.attrs.values()):
        return None
    members = {id(n) for n in nodes}
    level: dict[int, int] = {}
    order: list[gs.Node] = []
    for root in nodes:
        if id(root) in level:
            continue
        stack, active = [(root, iter(_producers(root)))], {id(root)}
        while stack:
            node, pending = stack[-1]
            for p in pending:
                if id(p) in level:
                    continue
                if id(p) in active or id(p) not in members:
                    return None
                stack.append((p, iter(_producers(p))))
                active.add(id(p))
                break
            else:
                stack.pop()
                active.discard(id(node))
                level[id(node)] = 1 + max((level[id(p)] for p in _producers(node)), default=-1)
                order.append(node)
    return sorted(order, key=lambda n: level[id(n)])


def _cleaned(graph: gs.Graph) -> bool:
    """graphsurgeon's `cleanup(remove_unused_graph_inputs=False, recurse_functions=False)` for a
    graph without subgraphs, in one walk (its own rebuilds the tensor map and asks every node for
    subgraphs, ~10 ms a call on a ViT): graph inputs lose their producers, the nodes no graph
    output depends on (through tensors the graph holds) are disconnected and dropped, the order
    of the rest kept. False, with nothing changed, for a graph with subgraphs."""
    nodes = graph.nodes
    if any(isinstance(v, gs.Graph) for n in nodes for v in n.attrs.values()):
        return False
    for inp in graph.inputs:
        inp.inputs.clear()
    members = {id(n) for n in nodes}
    used: set[int] = set()
    seen: set[str] = set()
    todo = []
    for t in graph.outputs:  # graphsurgeon skips tensors it does not hold (outer-graph ones)
        if t.name not in seen:
            seen.add(t.name)
            todo.append(t)
    while todo:
        for node in todo.pop().inputs:
            if id(node) not in members:
                continue
            used.add(id(node))
            for t in node.inputs:
                if t.name and t.name not in seen:
                    seen.add(t.name)
                    todo.append(t)
    kept = []
    for node in nodes:
        if id(node) in used:
            kept.append(node)
        else:
            node.inputs.clear()
            node.outputs.clear()
    graph.nodes = kept
    return True


def _producers(node: gs.Node) -> list[gs.Node]:
    """The nodes producing `node`'s inputs, first use first (graphsurgeon's order)."""
    found: dict[int, gs.Node] = {}
    for t in node.inputs:
        if t.name:  # graphsurgeon skips empty (omitted optional) tensors
            for p in t.inputs:
                found[id(p)] = p
    return list(found.values())
