"""Typed options (lipverify.options): unknown keys and bad values are refused, up front, with
the known names; the batch manifest checks with the same declarations."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import lipverify
from lipverify.batch import build_manifest
from lipverify.errors import UsageError
from lipverify.ir.activations import SlopeRestricted
from lipverify.methods import list_methods
from lipverify.options import LoadOptions, Options

RELU = SlopeRestricted.named("relu")


def _net():
    rng = np.random.default_rng(0)
    return lipverify.Network.sequential(
        [rng.normal(size=(4, 3)), rng.normal(size=(4, 4)), rng.normal(size=(2, 4))], [RELU, RELU])


def test_a_misspelt_option_is_refused_with_the_closest_name():
    with pytest.raises(UsageError, match=r"unknown option 'time_limt' \(did you mean "
                                         r"'time_limit'\?\); known options: .*solver"):
        lipverify.bound(_net(), method="naive", time_limt=5)
    with pytest.raises(UsageError, match="unknown option 'solvr'"):
        lipverify.bound(_net(), method="naive", solvr="scs")


def test_a_bad_value_is_refused_with_the_choices():
    with pytest.raises(UsageError, match="bad value 'banana' for form; choose one of: chordal"):
        lipverify.bound(_net(), method="lipsdp-neuron", form="banana")
    with pytest.raises(UsageError, match="bad value -1 for time_limit: expected a positive"):
        lipverify.bound(_net(), method="lipsdp-neuron", time_limit=-1)
    with pytest.raises(UsageError, match="bad value 0 for samples"):
        lipverify.bound(_net(), method="lower", samples=0)


def test_an_option_for_another_method_is_reported_unused_not_silently_dropped():
    r = lipverify.bound(_net(), method="naive", solver="scs")
    assert r.certified and "options not used by naive: solver" in r.warnings


def test_loader_options_are_checked_too(tmp_path):
    path = tmp_path / "w.npz"
    rng = np.random.default_rng(0)
    np.savez(path, W1=rng.normal(size=(4, 3)), W2=rng.normal(size=(2, 4)))
    with pytest.raises(UsageError, match="unknown option 'layot'.*did you mean 'layout'"):
        lipverify.load(path, layot="out-in")
    with pytest.raises(UsageError, match="bad value 'rows-first' for layout"):
        lipverify.load(path, layout="rows-first")
    assert lipverify.load(path, layout="out-in").widths == [3, 4, 2]


def test_manifest_checks_use_the_methods_declarations(tmp_path):
    with pytest.raises(UsageError) as exc:
        build_manifest({"models": [], "methods": ["naive"],
                        "options": {"form": "banana", "time_limt": 3}}, tmp_path, "m.yaml")
    msg = str(exc.value)
    assert "bad value 'banana' for form" in msg and "did you mean 'time_limit'" in msg


@pytest.mark.parametrize("info", list_methods(), ids=lambda m: m.name)
def test_conformance_every_method_takes_its_declared_options(info):
    """Registry conformance: each method's options record is a frozen Options subclass whose
    defaults are valid, and the method accepts every declared option at its default."""
    assert issubclass(info.options, Options) and info.options.__dataclass_params__.frozen
    defaults = info.options.defaults()
    assert info.options.from_dict(defaults) == info.options()
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.options().__setattr__("x", 1)
    if info.name == "lipsdp-network":
        return  # refused whatever its options
    given = {k: v for k, v in defaults.items() if v is not None}
    if "samples" in given:
        given.update(samples=16, steps=2)  # keep it quick
    net = _net()
    if info.name == "lipsdp-wide":  # one hidden layer only
        net = lipverify.Network.sequential([np.eye(3), np.ones((2, 3))], [RELU])
    if info.name == "lipsdp-spectral":  # stride-1 conv chains only
        from lipverify.ir.linear import Conv2d

        net = lipverify.Network.sequential(
            [Conv2d(np.ones((2, 1, 3, 3)) / 9, (1, 4, 4), pads=(1, 1, 1, 1)), np.ones((2, 32))],
            [RELU], input_shape=(1, 4, 4))
    r = lipverify.bound(net, method=info.name, **given)
    assert r.bound > 0 and not any("not used" in w for w in r.warnings)


def test_load_options_declare_every_loader_keyword():
    """Every keyword an importer reads is a declared LoadOptions field."""
    import inspect

    from lipverify.importers import IMPORTERS
    from lipverify.importers.torch_import import load_module

    fns = [*IMPORTERS.values(), load_module]
    names = {p.name for fn in fns for p in inspect.signature(fn).parameters.values()
             if p.kind is p.KEYWORD_ONLY}
    assert names <= set(LoadOptions.names()), names - set(LoadOptions.names())


@pytest.mark.parametrize("solver", ["smooth", "ipm"])
def test_a_solver_that_cannot_take_the_problem_is_a_usage_error(solver):
    """ldlt's per-layer SDPs need a conic solver: asking for a structured one used to run
    Clarabel silently."""
    with pytest.raises(UsageError, match=f"solver {solver} cannot solve this problem: it needs "
                                         "a conic solver"):
        lipverify.bound(_net(), method="ldlt", solver=solver)


def test_listing_the_registries_imports_no_torch():
    """`lipverify methods` answers fast: torch loads only when a method that needs it runs."""
    import subprocess
    import sys

    code = ("import sys, lipverify, lipverify.methods as m; m.list_methods(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
