"""Graph rewrites run before conversion: exporter spellings of known activations.

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


def _is_const(values, name, target) -> bool:
    v = values.get(name)
    return v is not None and np.size(v) == 1 and float(np.ravel(v)[0]) == target


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


def fuse_patterns(nodes: list, values: dict) -> list:
    """Return ``nodes`` with recognised MaxMin subgraphs replaced by GroupSortPair nodes."""
    from onnx import helper

    values = dict(values)
    for n in nodes:  # Constant nodes count as known values for matching
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            from onnx import numpy_helper

            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    producer = {o: n for n in nodes for o in n.output}
    users: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            users.setdefault(i, []).append(n)

    def minus(name):
        """(pos, neg) if ``name`` is ``pos - neg`` spelled as Sub or Add(pos, Mul(neg, -1))."""
        n = producer.get(name)
        if n is None:
            return None
        if n.op_type == "Sub":
            return n.input[0], n.input[1]
        if n.op_type == "Add":
            for i, j in ((0, 1), (1, 0)):
                m = producer.get(n.input[j])
                if m is not None and m.op_type == "Mul":
                    for a, b in ((0, 1), (1, 0)):
                        if _is_const(values, m.input[b], -1.0):
                            return n.input[i], m.input[a]
        return None

    def gather(name):
        n = producer.get(name)
        if n is None or n.op_type != "Gather" or n.input[1] not in values:
            return None
        idx = np.ravel(values[n.input[1]])
        if np.ndim(values[n.input[1]]) != 0 or idx[0] not in (0, 1):
            return None
        return n.input[0], _attr(n, "axis", 0), int(idx[0])

    replaced = {}
    for relu in nodes:
        if relu.op_type != "Relu":
            continue
        diff = minus(relu.input[0])
        if diff is None:
            continue
        gp, gn = gather(diff[0]), gather(diff[1])
        if not gp or not gn or gp[:2] != gn[:2] or {gp[2], gn[2]} != {0, 1}:
            continue
        x, axis = gp[0], gp[1]
        r = relu.output[0]
        outs = {}
        for u in users.get(r, []):
            for cand in (u.output[0],):
                d = minus(cand)
                if d == (diff[0], r):
                    outs["min"] = cand
                elif u.op_type == "Add" and set(u.input) == {diff[1], r}:
                    outs["max"] = cand
            if u.op_type == "Mul":  # r * -1 feeding Add(pos, .)
                for v in users.get(u.output[0], []):
                    if minus(v.output[0]) == (diff[0], r):
                        outs["min"] = v.output[0]
        if set(outs) != {"min", "max"}:
            continue
        unsq = {}
        for key, name in outs.items():
            us = [u for u in users.get(name, []) if u.op_type == "Unsqueeze"]
            axes = _axes(us[0], values) if len(us) == 1 else None
            if axes is not None and len(axes) == 1:
                unsq[key] = (us[0].output[0], axes[0])
        if len(unsq) != 2 or unsq["min"][1] != unsq["max"][1]:
            continue
        cats = [c for c in users.get(unsq["min"][0], []) if c.op_type == "Concat"]
        if len(cats) != 1 or len(cats[0].input) != 2:
            continue
        cat = cats[0]
        order = list(cat.input)
        if order not in ([unsq["min"][0], unsq["max"][0]], [unsq["max"][0], unsq["min"][0]]):
            continue
        # Axes may be negative and are normalised by the converter, which knows the ranks.
        replaced[id(cat)] = helper.make_node(
            "GroupSortPair",
            [x],
            list(cat.output),
            name=(cat.name or "") + "/maxmin",
            axis=axis,
            unsqueeze_axis=unsq["min"][1],
            concat_axis=_attr(cat, "axis", 0),
            max_first=int(order[0] == unsq["max"][0]),
        )
    return [replaced.get(id(n), n) for n in nodes]
