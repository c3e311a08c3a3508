"""Graph rewrites run before conversion: exporter spellings of known activations.

Each spelling has one small matcher (:data:`MATCHERS`); a match replaces the subgraph's last
node by one node of the ``lipverify`` domain (:data:`FUSED_DOMAIN`), which the importer
converts by its own name, so it is never mistaken for a standard ONNX op. Nodes left unused
are dropped afterwards.

* SiLU: ``Mul(x, Sigmoid(x))`` -> ``lipverify.Silu(x)``.
* GELU: ``Mul`` products of ``x``, ``0.5`` and ``Add(Erf(Div(x, c)), 1)`` (or ``Mul(x, 1/c)``
  inside the Erf) -> ``lipverify.Gelu(x, k = sqrt 2 / c)``.
* MaxMin, below.

GroupSort has no ONNX op. PyTorch exports of MaxMin (GroupSort-2) spell it, per
pair ``(x0, x1)`` gathered along a size-2 axis::

    r   = Relu(x1 - x0)        # Sub, or Add(x1, Mul(x0, -1))
    min = x1 - r               # Sub, or Add(x1, Mul(r, -1))
    max = x0 + r
    out = Concat(Unsqueeze(min), Unsqueeze(max))   # or (max, min)

:func:`fuse_patterns` replaces the Concat by one ``GroupSortPair`` node, so the
network gets a GroupSort activation (exactly 1-Lipschitz, §4) instead of a
residual ReLU (whose LipSDP bound is sqrt 2).
"""

from __future__ import annotations

import numpy as np


def _axes(node, values):
    for a in node.attribute:
        if a.name == "axes":
            return list(a.ints)
    if len(node.input) > 1 and node.input[1] in values:
        return [int(v) for v in np.ravel(values[node.input[1]])]
    return None


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return a.i
    return default


FUSED_DOMAIN = "lipverify"


class Graph:
    """Index of a node list: producers, users and known constant values."""

    def __init__(self, nodes: list, values: dict):
        from onnx import numpy_helper

        self.nodes = nodes
        self.values = dict(values)
        for n in nodes:  # Constant nodes count as known values for matching
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.producer = {o: n for n in nodes for o in n.output}
        self.users: dict[str, list] = {}
        for n in nodes:
            for i in n.input:
                self.users.setdefault(i, []).append(n)

    def const(self, name) -> float | None:
        """The scalar value of ``name`` when it is a known one-element constant."""
        v = self.values.get(name)
        return float(np.ravel(v)[0]) if v is not None and np.size(v) == 1 else None

    def op(self, name, op_type: str):
        """The node producing ``name`` if it is an ``op_type``."""
        n = self.producer.get(name)
        return n if n is not None and n.op_type == op_type else None

    def minus(self, name):
        """(pos, neg) if ``name`` is ``pos - neg`` spelled as Sub or Add(pos, Mul(neg, -1))."""
        n = self.producer.get(name)
        if n is None:
            return None
        if n.op_type == "Sub":
            return n.input[0], n.input[1]
        if n.op_type == "Add":
            for i, j in ((0, 1), (1, 0)):
                m = self.producer.get(n.input[j])
                if m is not None and m.op_type == "Mul":
                    for a, b in ((0, 1), (1, 0)):
                        if self.const(m.input[b]) == -1.0:
                            return n.input[i], m.input[a]
        return None

    def gather(self, name):
        n = self.producer.get(name)
        if n is None or n.op_type != "Gather" or n.input[1] not in self.values:
            return None
        idx = np.ravel(self.values[n.input[1]])
        if np.ndim(self.values[n.input[1]]) != 0 or idx[0] not in (0, 1):
            return None
        return n.input[0], _attr(n, "axis", 0), int(idx[0])

    def factors(self, name, depth: int = 2) -> list[str]:
        """The leaves of a product tree of Mul nodes below ``name`` (``depth`` levels)."""
        n = self.op(name, "Mul")
        if n is None or depth == 0:
            return [name]
        return [f for i in n.input for f in self.factors(i, depth - 1)]


def _fused(op_type: str, inputs: list, node, **attrs):
    from onnx import helper

    return helper.make_node(op_type, inputs, list(node.output), domain=FUSED_DOMAIN,
                            name=(node.name or node.output[0]) + f"/{op_type.lower()}", **attrs)


def match_silu(g: Graph, node):
    """``Mul(x, Sigmoid(x))`` in either order."""
    if node.op_type != "Mul":
        return None
    for a, b in ((0, 1), (1, 0)):
        sig = g.op(node.input[b], "Sigmoid")
        if sig is not None and sig.input[0] == node.input[a]:
            return _fused("Silu", [node.input[a]], node)
    return None


def match_gelu(g: Graph, node):
    """``0.5 * x * (1 + erf(x / c))`` as a product of up to three Mul factors."""
    if node.op_type != "Mul":
        return None
    leaves = g.factors(node.output[0])
    if len(leaves) != 3:
        return None
    halves = [f for f in leaves if g.const(f) == 0.5]
    rest = [f for f in leaves if g.const(f) != 0.5]
    if len(halves) != 1 or len(rest) != 2:
        return None
    for x, t in (rest, rest[::-1]):
        add = g.op(t, "Add")
        if add is None:
            continue
        ones = [i for i in add.input if g.const(i) == 1.0]
        erf = next((g.op(i, "Erf") for i in add.input if g.op(i, "Erf")), None)
        if len(ones) != 1 or erf is None:
            continue
        inner = g.producer.get(erf.input[0])
        if inner is None or inner.input[0] != x or g.const(inner.input[1]) is None:
            continue
        c = g.const(inner.input[1])
        if inner.op_type == "Div" and c != 0:
            k = np.sqrt(2.0) / c
        elif inner.op_type == "Mul":
            k = np.sqrt(2.0) * c
        else:
            continue
        return _fused("Gelu", [x], node, k=float(k))
    return None


def _maxmin_at(g: Graph, relu):
    """``(Concat node, fused GroupSortPair)`` of the MaxMin pair through ``relu`` (module
    docstring), or None."""
    diff = g.minus(relu.input[0])
    if diff is None:
        return None
    gp, gn = g.gather(diff[0]), g.gather(diff[1])
    if not gp or not gn or gp[:2] != gn[:2] or {gp[2], gn[2]} != {0, 1}:
        return None
    x, axis = gp[0], gp[1]
    r = relu.output[0]
    outs = {}
    for u in g.users.get(r, []):
        cand = u.output[0]
        d = g.minus(cand)
        if d == (diff[0], r):
            outs["min"] = cand
        elif u.op_type == "Add" and set(u.input) == {diff[1], r}:
            outs["max"] = cand
        if u.op_type == "Mul":  # r * -1 feeding Add(pos, .)
            for v in g.users.get(u.output[0], []):
                if g.minus(v.output[0]) == (diff[0], r):
                    outs["min"] = v.output[0]
    if set(outs) != {"min", "max"}:
        return None
    unsq = {}
    for key, name in outs.items():
        us = [u for u in g.users.get(name, []) if u.op_type == "Unsqueeze"]
        axes = _axes(us[0], g.values) if len(us) == 1 else None
        if axes is not None and len(axes) == 1:
            unsq[key] = (us[0].output[0], axes[0])
    if len(unsq) != 2 or unsq["min"][1] != unsq["max"][1]:
        return None
    cats = [c for c in g.users.get(unsq["min"][0], []) if c.op_type == "Concat"]
    if len(cats) != 1 or len(cats[0].input) != 2:
        return None
    cat = cats[0]
    order = list(cat.input)
    if order not in ([unsq["min"][0], unsq["max"][0]], [unsq["max"][0], unsq["min"][0]]):
        return None
    # Axes may be negative and are normalised by the converter, which knows the ranks.
    return cat, _fused("GroupSortPair", [x], cat, axis=axis, unsqueeze_axis=unsq["min"][1],
                       concat_axis=_attr(cat, "axis", 0),
                       max_first=int(order[0] == unsq["max"][0]))


def match_maxmin(g: Graph) -> dict:
    """Every MaxMin pair: found from its Relu, replaced at its Concat."""
    out = {}
    for relu in g.nodes:
        if relu.op_type == "Relu":
            found = _maxmin_at(g, relu)
            if found is not None:
                out[id(found[0])] = found[1]
    return out


#: One matcher per exporter spelling: ``fn(graph, node) -> replacement node or None``.
MATCHERS = {"silu": match_silu, "gelu": match_gelu}


def fuse_patterns(nodes: list, values: dict) -> list:
    """Return ``nodes`` with every recognised spelling replaced by its fused node."""
    g = Graph(nodes, values)
    replaced = match_maxmin(g)
    for node in nodes:
        if id(node) in replaced:
            continue
        for match in MATCHERS.values():
            new = match(g, node)
            if new is not None:
                replaced[id(node)] = new
                break
    return [replaced.get(id(n), n) for n in nodes]
