"""PyTorch importer: modules, state dicts and files, via the in-memory ONNX export."""

from __future__ import annotations

import copy
import hashlib
import warnings

import numpy as np
import pytest
import torch
from conftest import shared_path
from torch import nn

from lipverify.errors import ModelLoadError, UntrustedPickleError, UsageError
from lipverify.importers import load
from lipverify.importers.torch_import import load_module, load_torch_file
from lipverify.ir.activations import GroupSort

#: torch.jit.script/trace/save are deprecated upstream but still what users have on disk.
jit_deprecated = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

GROUPSORT_PTH = ("weights", "robust_benchmark_MLP_MNIST_GNP_groupsort.pth")


class GroupSort2(nn.Module):
    """Sorts consecutive pairs, ascending: exports as Reshape -> TopK(largest=0) -> Reshape."""

    def forward(self, x):
        b = x.shape[0]
        return x.reshape(b, -1, 2).sort(dim=-1).values.reshape(b, -1)


class MaxMin(nn.Module):
    """(min, max) of consecutive pairs via torch.minimum/maximum + stack."""

    def forward(self, x):
        v = x.reshape(x.shape[0], -1, 2)
        a, b = v[..., 0], v[..., 1]
        return torch.stack([torch.minimum(a, b), torch.maximum(a, b)], dim=-1).flatten(1)


class ReluMaxMin(nn.Module):
    """The same map written with a ReLU: min = b - relu(b - a), max = a + relu(b - a)."""

    def forward(self, x):
        v = x.reshape(x.shape[0], -1, 2)
        a, b = v[..., 0], v[..., 1]
        r = torch.relu(b - a)
        return torch.stack([b - r, a + r], dim=-1).flatten(1)


class Residual(nn.Module):
    def __init__(self, n: int = 8):
        super().__init__()
        self.inp = nn.Linear(5, n)
        self.f = nn.Sequential(nn.Linear(n, n), nn.ReLU(), nn.Linear(n, n))
        self.out = nn.Linear(n, 3)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        return self.out(torch.relu(h + self.f(h)))


class Branchy(nn.Module):
    """Branches on input values: a trace would silently keep one branch."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.lin(x)
        return -self.lin(x)


def _randomize_bn(module):
    gen = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen))
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=gen))
            m.bias.data.copy_(torch.randn(n, generator=gen))
    return module


def _check_forward(module, network, input_shape, n=7):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn((n, *input_shape), generator=gen, dtype=torch.float64)
    ref = _reference(module, x)
    got = network.forward(x.reshape(n, -1).numpy())
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())


def _reference(module, x):
    with torch.no_grad():
        return copy.deepcopy(module).double().eval()(x).numpy()


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 10),
        nn.ReLU(),
        nn.Linear(10, 8),
        nn.Tanh(),
        nn.Linear(8, 8),
        nn.LeakyReLU(0.1),
        nn.Linear(8, 3),
    )


# ------------------------------------------------------------------- modules
def test_mlp_input_shape_inferred_and_forward_matches():
    module = _mlp()
    net = load(module)  # lipverify.load dispatches modules to load_module
    assert net.input_dim == 6 and net.output_dim == 3
    assert [a.describe().split()[0] for a in net.activations] == ["relu", "tanh", "leaky_relu(0.1)"]
    assert net.provenance.format == "torch-module" and len(net.provenance.sha256) == 64
    _check_forward(module, net, (6,))
    # the caller's module is untouched (still float32, still in training mode)
    assert module[0].weight.dtype == torch.float32 and module.training


def test_conv_net_with_stride_and_padding():
    torch.manual_seed(1)
    module = nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(5 * 4 * 4, 3),
    )
    with pytest.raises(UsageError, match="input_shape="):
        load_module(module)
    net = load_module(module, input_shape=(2, 8, 8))
    assert net.input_shape == (2, 8, 8)
    _check_forward(module, net, (2, 8, 8))


def test_batchnorm_eval_mode():
    torch.manual_seed(2)
    module = _randomize_bn(
        nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1),
            nn.BatchNorm2d(3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3 * 5 * 5, 6),
            nn.ReLU(),
            nn.BatchNorm1d(6),
            nn.Linear(6, 2),
        )
    )
    net = load_module(module, example_input=torch.zeros(4, 2, 5, 5))
    _check_forward(module, net, (2, 5, 5))


def test_residual_block():
    torch.manual_seed(3)
    module = Residual()
    net = load_module(module)  # first child is Linear(5, 8)
    assert not net.is_sequential
    _check_forward(module, net, (5,))


@pytest.mark.parametrize("act", [GroupSort2, MaxMin, ReluMaxMin])
def test_maxmin_modules_become_groupsort(act):
    torch.manual_seed(4)
    module = nn.Sequential(nn.Linear(6, 8), act(), nn.Linear(8, 4), act(), nn.Linear(4, 2))
    net = load_module(module)
    assert all(isinstance(a, GroupSort) and a.group_size == 2 for a in net.activations)
    _check_forward(module, net, (6,))


def test_softmax_dropped_or_kept():
    torch.manual_seed(5)
    module = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3), nn.Softmax(dim=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "final Softmax dropped"
        logits = load_module(module)
    _check_forward(module[:-1], logits, (4,))
    kept = load_module(module, keep_softmax=True)
    _check_forward(module, kept, (4,))


def test_wrong_input_shape_is_a_usage_error():
    with pytest.raises(UsageError, match="input_shape"):
        load_module(_mlp(), input_shape=(7,))


def test_value_dependent_control_flow_is_refused():
    with pytest.raises(ModelLoadError, match="branches on input values"):
        load_module(Branchy())


def test_shared_groupsort_state_dict():
    path = shared_path(*GROUPSORT_PTH)
    module = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 100),
        GroupSort2(),
        nn.Linear(100, 100),
        GroupSort2(),
        nn.Linear(100, 10),
    )
    net = load_module(module, state_dict=str(path))
    assert net.input_dim == 784 and net.output_dim == 10
    assert [type(a) for a in net.activations] == [GroupSort, GroupSort]
    assert all(a.group_size == 2 and not a.descending for a in net.activations)
    assert net.provenance.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    module.load_state_dict(torch.load(path, weights_only=True))
    _check_forward(module, net, (1, 28, 28))


def test_state_dict_mismatch_is_reported():
    sd = _mlp().state_dict()
    del sd["0.bias"]
    with pytest.raises(ModelLoadError, match="missing keys"):
        load_module(_mlp(), state_dict=sd)


# --------------------------------------------------------------------- files
@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(6)
    module = nn.Sequential(nn.Linear(6, 8), GroupSort2(), nn.Linear(8, 3))
    return tmp_path, module


@jit_deprecated
def test_torchscript_files_load(saved):
    tmp, module = saved
    for name in ("model.ts", "model.pt"):
        torch.jit.save(torch.jit.script(module), tmp / name)
        net = load(tmp / name)
        assert net.provenance.format == "torchscript"
        _check_forward(module, net, (6,))
    traced = torch.jit.trace(module, torch.randn(2, 6))
    torch.jit.save(traced, tmp / "traced.pt")
    _check_forward(module, load(tmp / "traced.pt"), (6,))


def test_pt2_file_loads(saved):
    tmp, module = saved
    batch = torch.export.Dim("batch")
    program = torch.export.export(module, (torch.randn(3, 6),), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp / "model.pt2")
    net = load(tmp / "model.pt2")
    assert net.provenance.format == "torch-export" and net.input_dim == 6
    _check_forward(module, net, (6,))


def test_pt2_with_fixed_batch_is_refused(saved):
    tmp, module = saved
    torch.export.save(torch.export.export(module, (torch.randn(3, 6),)), tmp / "b3.pt2")
    with pytest.raises(UsageError, match="batch"):
        load(tmp / "b3.pt2")


def test_whole_pickled_model_needs_trust(saved):
    tmp, module = saved
    torch.save(module, tmp / "whole.pth")
    with pytest.raises(UntrustedPickleError, match="trust_pickle=True"):
        load(tmp / "whole.pth")
    net = load(tmp / "whole.pth", trust_pickle=True)
    assert net.provenance.format == "torch-pickle"
    _check_forward(module, net, (6,))


def test_state_dict_file_is_refused_with_advice(saved):
    tmp, module = saved
    torch.save(module.state_dict(), tmp / "weights.pth")
    with pytest.raises(UsageError, match=r"state_dict='weights.pth'"):
        load_torch_file(tmp / "weights.pth")
    torch.save({"epoch": 3, "state_dict": module.state_dict()}, tmp / "ckpt.pt")
    with pytest.raises(UsageError, match="only weights"):
        load(tmp / "ckpt.pt")
    net = load(module, state_dict=tmp / "ckpt.pt")  # the nested state dict is found
    _check_forward(module, net, (6,))


@jit_deprecated
@pytest.mark.parametrize("what", ["state_dict", "torchscript", "legacy", "garbage"])
def test_truncated_or_corrupt_file(saved, what):
    tmp, module = saved
    src = tmp / "src.pt"
    if what == "state_dict":
        torch.save(module.state_dict(), src)
    elif what == "torchscript":
        torch.jit.save(torch.jit.script(module), src)
    elif what == "legacy":
        torch.save(module.state_dict(), src, _use_new_zipfile_serialization=False)
    else:
        src.write_bytes(b"not a model at all")
    data = src.read_bytes()
    bad = tmp / "bad.pt"
    bad.write_bytes(data[: max(len(data) // 2, 1)] if what != "garbage" else data)
    with pytest.raises(ModelLoadError) as info:
        load(bad)
    assert "\n" not in str(info.value)
