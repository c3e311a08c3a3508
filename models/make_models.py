"""Train and export the small sample networks in ``models/``.

Run from the repository root::

    python models/make_models.py

Seven networks are trained on scikit-learn's bundled digits data set (8x8 images, 10 classes,
no download).  Pixels are scaled to ``[0, 1]`` (divided by 16) *outside* the networks, so every
network takes already-scaled inputs and outputs logits (no softmax).

Everything is deterministic: fixed seeds, a fixed train/test split, one torch thread.  For each
network the script writes ``<name>.onnx`` (TorchScript-based exporter, opset 17, input
``"input"``, output ``"logits"``, dynamic batch axis) and ``<name>.pt`` (state dict); the two
plain MLPs also get ``<name>.npz`` (``w1..wk`` as ``[out, in]``, ``b1..bk``), and the ReLU MLP
also gets a TorchScript file ``digits_mlp_relu.ts.pt`` and a ``torch.export`` program
``digits_mlp_relu.pt2``.  Every ONNX file is checked against torch with onnxruntime.

Tests can import the architectures without training::

    from make_models import MaxMin, build_models
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

OUT_DIR = Path(__file__).resolve().parent
SEED = 0
N_FEATURES = 64
N_CLASSES = 10
MAX_FILE_BYTES = 200_000

# name -> (epochs, learning rate)
TRAINING = {
    "digits_mlp_relu": (30, 3e-3),
    "digits_mlp_tanh": (30, 3e-3),
    "digits_cnn": (30, 3e-3),
    "digits_maxmin": (30, 3e-3),
    "digits_resnet_bn": (30, 3e-3),
    "digits_cnn_maxpool": (30, 3e-3),
    "digits_gs_cnn": (60, 1e-2),
}
#: 1-Lipschitz models are trained on their logits times this temperature (the exported
#: network is the 1-Lipschitz one; argmax, hence accuracy, is the same).
TEMPERATURE = {"digits_gs_cnn": 16.0}
NPZ_MODELS = ("digits_mlp_relu", "digits_mlp_tanh")


class MaxMin(nn.Module):
    """MaxMin (GroupSort with groups of 2): each consecutive pair ``(a, b)`` of the last axis
    becomes ``(min(a, b), max(a, b))``.  The last dimension must be even.

    ``x.reshape(-1, 2)`` (rather than ``x.reshape(*x.shape[:-1], -1, 2)``, which is the same
    pairing for a contiguous tensor) spares the exported ONNX graph the Shape/Gather/Unsqueeze/
    Concat arithmetic that builds a batch-dependent reshape target: it becomes
    ``Reshape[-1,2] -> ReduceMin, ReduceMax (axis -1) -> Unsqueeze x2 -> Concat(axis -1) ->
    Reshape(Shape(x))``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pairs = x.reshape(-1, 2)
        lo = torch.min(pairs, dim=-1).values
        hi = torch.max(pairs, dim=-1).values
        return torch.stack((lo, hi), dim=-1).reshape_as(x)


class ResidualBlock(nn.Module):
    """``relu(x + bn2(conv2(relu(bn1(conv1(x))))))``, 3x3 convs keeping the shape."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class OrthogonalConv1x1(nn.Module):
    """A 1x1 convolution whose channel matrix is orthogonal by construction (torch's
    orthogonal parametrization): with a pixel unshuffle before it, an orthogonal conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.lin = nn.utils.parametrizations.orthogonal(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(x, self.lin.weight[:, :, None, None], self.lin.bias)

    def frozen(self) -> nn.Conv2d:
        c = self.lin.weight.shape[0]
        conv = nn.Conv2d(c, c, 1)
        with torch.no_grad():
            conv.weight.copy_(self.lin.weight[:, :, None, None])
            conv.bias.copy_(self.lin.bias)
        return conv


class GroupSortCNN(nn.Module):
    """A 1-Lipschitz GroupSort CNN: pixel unshuffles (permutations), orthogonal 1x1 convs,
    MaxMin (GroupSort-2), and a last linear map with orthonormal rows. Every layer has norm
    1, so the network is 1-Lipschitz in l2 by construction."""

    def __init__(self):
        super().__init__()
        self.conv1 = OrthogonalConv1x1(4)
        self.conv2 = OrthogonalConv1x1(16)
        self.head = nn.utils.parametrizations.orthogonal(nn.Linear(64, N_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = MaxMin()(self.conv1(nn.functional.pixel_unshuffle(x, 2)))
        x = MaxMin()(self.conv2(nn.functional.pixel_unshuffle(x, 2)))
        return self.head(x.flatten(1))

    def frozen(self) -> nn.Sequential:
        """The same function with plain weights (what is exported and saved)."""
        head = nn.Linear(64, N_CLASSES)
        with torch.no_grad():
            head.weight.copy_(self.head.weight)
            head.bias.copy_(self.head.bias)
        return nn.Sequential(nn.PixelUnshuffle(2), self.conv1.frozen(), MaxMin(),
                             nn.PixelUnshuffle(2), self.conv2.frozen(), MaxMin(), nn.Flatten(),
                             head).eval()


def _mlp(widths: list[int], act: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def _cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, N_CLASSES),
    )


def _resnet_bn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        ResidualBlock(8),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, N_CLASSES),
    )


def _cnn_maxpool() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 2 * 2, N_CLASSES),
    )


INPUT_SHAPES = {
    "digits_mlp_relu": (N_FEATURES,),
    "digits_mlp_tanh": (N_FEATURES,),
    "digits_cnn": (1, 8, 8),
    "digits_maxmin": (N_FEATURES,),
    "digits_resnet_bn": (1, 8, 8),
    "digits_cnn_maxpool": (1, 8, 8),
    "digits_gs_cnn": (1, 8, 8),
}

ARCHITECTURES = {
    "digits_mlp_relu": "MLP 64-64-32-10, ReLU",
    "digits_mlp_tanh": "MLP 64-32-32-10, tanh",
    "digits_cnn": (
        "CNN on [N,1,8,8]: Conv2d(1,4,3,p=1) ReLU, Conv2d(4,8,3,s=2,p=1) ReLU, "
        "Flatten, Linear(128,10)"
    ),
    "digits_maxmin": "MLP 64-32-32-10, MaxMin (pairs -> (min, max))",
    "digits_resnet_bn": (
        "ResNet on [N,1,8,8]: Conv2d(1,8,3,p=1) BN ReLU, residual block (Conv 3x3 BN ReLU "
        "Conv 3x3 BN, + x, ReLU), Flatten, Linear(512,10)"
    ),
    "digits_cnn_maxpool": (
        "CNN on [N,1,8,8]: Conv2d(1,8,3,p=1) ReLU MaxPool(2), Conv2d(8,16,3,p=1) ReLU "
        "MaxPool(2), Flatten, Linear(64,10)"
    ),
    "digits_gs_cnn": (
        "1-Lipschitz GroupSort CNN on [N,1,8,8]: PixelUnshuffle(2), orthogonal 1x1 conv 4->4, "
        "MaxMin, PixelUnshuffle(2), orthogonal 1x1 conv 16->16, MaxMin, Flatten, Linear(64,10) "
        "with orthonormal rows (trained at temperature 16)"
    ),
}


def build_models() -> dict[str, nn.Module]:
    """Fresh (untrained) architectures, name -> module.  Weights depend on the global RNG."""
    return {
        "digits_mlp_relu": _mlp([N_FEATURES, 64, 32, N_CLASSES], nn.ReLU),
        "digits_mlp_tanh": _mlp([N_FEATURES, 32, 32, N_CLASSES], nn.Tanh),
        "digits_cnn": _cnn(),
        "digits_maxmin": _mlp([N_FEATURES, 32, 32, N_CLASSES], MaxMin),
        "digits_resnet_bn": _resnet_bn(),
        "digits_cnn_maxpool": _cnn_maxpool(),
        "digits_gs_cnn": GroupSortCNN(),
    }


def seed_everything(seed: int = SEED) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits, pixels scaled to [0, 1], stratified 75/25 split (fixed)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    lr: float,
    seed: int,
    batch_size: int = 64,
    temperature: float = 1.0,
) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch_size):
            idx = perm[start : start + batch_size]
            opt.zero_grad()
            loss_fn(temperature * model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model(x).argmax(dim=1) == y).float().mean().item()


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # legacy exporter, on purpose
        _export_onnx(model, example, path)


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )


def check_onnx(
    model: nn.Module, path: Path, in_shape: tuple[int, ...], real: np.ndarray
) -> tuple[list[str], float]:
    """onnxruntime == torch (float32, atol 1e-5 plus rtol 1e-5: logits reach |20|, where one
    float32 ulp is ~2e-6) on random uniform [0, 1] inputs and on real test images.

    Returns the sorted ONNX op types and the largest absolute difference seen."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(SEED)
    inputs = [rng.uniform(0.0, 1.0, size=(b, *in_shape)).astype(np.float32) for b in (1, 7, 50)]
    inputs.append(real.reshape(-1, *in_shape).astype(np.float32))
    worst = 0.0
    for x in inputs:
        (got,) = sess.run(["logits"], {"input": x})
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        assert got.dtype == np.float32 and got.shape == want.shape, (got.dtype, got.shape)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=str(path))
        worst = max(worst, float(np.abs(got - want).max()))
    return sorted({node.op_type for node in proto.graph.node}), worst


def save_npz(model: nn.Sequential, path: Path) -> None:
    linears = [m for m in model if isinstance(m, nn.Linear)]
    arrays = {}
    for k, lin in enumerate(linears, start=1):
        arrays[f"w{k}"] = lin.weight.detach().numpy().astype(np.float32)  # [out, in]
        arrays[f"b{k}"] = lin.bias.detach().numpy().astype(np.float32)
    np.savez(path, **arrays)


def export_extra_relu(model: nn.Module, example: torch.Tensor) -> None:
    """TorchScript and torch.export versions of the ReLU MLP, each checked against torch."""
    import warnings

    ts_path = OUT_DIR / "digits_mlp_relu.ts.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in recent torch
        # trace, not script: scripted files list Final constants in hash-seed order, so they
        # are not byte-reproducible across runs.
        traced = torch.jit.trace(model, (example,))
        traced.save(str(ts_path))
        loaded_ts = torch.jit.load(str(ts_path))

    pt2_path = OUT_DIR / "digits_mlp_relu.pt2"
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(pt2_path))
    loaded_ep = torch.export.load(str(pt2_path)).module()

    x = torch.rand(9, N_FEATURES, generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(loaded_ts(x), want, rtol=0, atol=1e-6)
        torch.testing.assert_close(loaded_ep(x), want, rtol=0, atol=1e-6)


def write_readme(
    results: dict[str, float], files: dict[str, list[str]], ops: dict[str, list[str]]
) -> None:
    lines = [
        "# Sample models",
        "",
        "Small networks trained on scikit-learn's bundled digits data set (8x8 images, 10",
        "classes; 1347 train / 450 test, stratified split, `random_state=0`).  Made by",
        "",
        "```",
        "python models/make_models.py",
        "```",
        "",
        "which is deterministic (fixed seeds, one torch thread; about 10 s on one CPU core).",
        "",
        "* **Inputs** are pixel values already scaled to `[0, 1]` (raw digits / 16); the",
        "  scaling is *not* part of the networks.  MLPs take `[N, 64]` (flattened image),",
        "  the CNNs and the ResNet take `[N, 1, 8, 8]`.",
        "* **Outputs are logits** (no softmax), shape `[N, 10]`.",
        "* ONNX: exported with `torch.onnx.export(..., dynamo=False, opset_version=17)`,",
        '  input `"input"`, output `"logits"`, dynamic batch axis; checked against torch with',
        "  onnxruntime on random and real inputs (atol 1e-5 + rtol 1e-5).  Op types are listed",
        "  below; MaxMin appears as `Reshape[-1,2] -> ReduceMin/ReduceMax -> Unsqueeze ->",
        "  Concat -> Reshape(Shape(x))`.",
        "* `.pt`: `state_dict` of the `nn.Sequential` returned by",
        "  `make_models.build_models()[name]` (for digits_gs_cnn: of its `.frozen()` form,",
        "  plain weights instead of the orthogonal parametrization).",
        "* `.npz`: `w1..wk` (`[out, in]`) and `b1..bk`, float32.",
        "* `digits_mlp_relu.ts.pt`: TorchScript (`torch.jit.trace`), `torch.jit.load`-able;",
        "  `digits_mlp_relu.pt2`: `torch.export` program (dynamic batch), `torch.export.load`.",
        "",
        "| name | files | architecture | test accuracy | ONNX op types |",
        "|---|---|---|---|---|",
    ]
    for name, acc in results.items():
        listed = ", ".join(f"`{f}`" for f in files[name])
        op_list = ", ".join(ops[name])
        lines.append(f"| {name} | {listed} | {ARCHITECTURES[name]} | {acc:.4f} | {op_list} |")
    lines.append("")
    (OUT_DIR / "README.md").write_text("\n".join(lines))


def main() -> int:
    # One intra-op thread (within the 2-core budget): these nets are far too small to gain from
    # more, and on a loaded 2-core machine two OpenMP threads spin at every op barrier - the
    # whole script went from ~10 s to ~2 min.  A fixed thread count also keeps results stable.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    seed_everything(SEED)

    x_train, x_test, y_train, y_test = load_data()
    xtr, ytr = torch.from_numpy(x_train), torch.from_numpy(y_train)
    xte, yte = torch.from_numpy(x_test), torch.from_numpy(y_test)

    results: dict[str, float] = {}
    files: dict[str, list[str]] = {}
    onnx_ops: dict[str, list[str]] = {}
    for i, name in enumerate(build_models()):
        seed_everything(SEED + i)
        model = build_models()[name]  # rebuilt after seeding: init independent of order
        in_shape = INPUT_SHAPES[name]
        epochs, lr = TRAINING[name]
        train(model, xtr.reshape(-1, *in_shape), ytr, epochs, lr, seed=SEED + i,
              temperature=TEMPERATURE.get(name, 1.0))
        if isinstance(model, GroupSortCNN):
            model = model.frozen()
        acc = accuracy(model, xte.reshape(-1, *in_shape), yte)
        results[name] = acc

        example = xte[:2].reshape(-1, *in_shape)
        paths = [OUT_DIR / f"{name}.onnx", OUT_DIR / f"{name}.pt"]
        export_onnx(model, example, paths[0])
        torch.save(model.state_dict(), paths[1])
        if name in NPZ_MODELS:
            paths.append(OUT_DIR / f"{name}.npz")
            save_npz(model, paths[-1])
        if name == "digits_mlp_relu":
            export_extra_relu(model, example)
            paths += [OUT_DIR / "digits_mlp_relu.ts.pt", OUT_DIR / "digits_mlp_relu.pt2"]
        ops, worst = check_onnx(model, paths[0], in_shape, x_test)
        onnx_ops[name] = ops

        for p in paths:
            size = p.stat().st_size
            assert size < MAX_FILE_BYTES, f"{p} is {size} bytes"
        files[name] = [p.name for p in paths]
        print(f"{name}: test accuracy {acc:.4f}; ONNX ops {ops}; max |ort - torch| {worst:.2e}")
        for p in paths:
            print(f"    {p.name} ({p.stat().st_size} bytes)")

    write_readme(results, files, onnx_ops)
    return 0


if __name__ == "__main__":
    sys.exit(main())
