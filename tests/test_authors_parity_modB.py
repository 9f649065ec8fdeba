"""Equality with the authors' own PyTorch code, same weights, float64, forward and gradients.

Skips cleanly unless YOLO_ATTENTION_AUTHORS_CODE names a directory holding the authors'
repositories (see tests/_authors.py); docs/authors-parity.md records commits and results.
Where a documented deviation makes the outputs differ, the parts that agree are compared
(the deviating part is taken from one side for both) and the deviation itself is measured.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
import uuid
import warnings

import pytest
import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from _authors import authors_module, authors_root
from _helpers import _registry_does_not_leak  # noqa: F401
from yolo_attention import CPCA, LSKA, MLCA, ShuffleAttention, SKAttention, SpatialGroupEnhance


@contextlib.contextmanager
def _package_module(repo: str, directory: str, module: str):
    """Import ``directory/module.py`` of ``repo`` as a module of a throw-away package registered in
    ``sys.modules`` (for files with relative imports or import-time registries), or skip."""
    folder = authors_root(repo) / directory
    if not (folder / f"{module}.py").is_file():
        pytest.skip(f"authors' code not available: {folder / f'{module}.py'} does not exist")
    name = f"_authors_{uuid.uuid4().hex}"
    pkg = types.ModuleType(name)
    pkg.__path__ = [str(folder)]
    sys.modules[name] = pkg
    try:
        yield importlib.import_module(f"{name}.{module}")
    finally:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


_REPO_TOP_LEVEL = {"utils", "models", "nnunet"}  # generic names the authors' files import from their repositories


@contextlib.contextmanager
def _own_top_level_modules():
    """While the authors' file loads, its ``utils``/``models`` are its repository's, not those of another
    test (a classic YOLO repository); afterwards the previous entries of ``sys.modules`` are restored."""
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in _REPO_TOP_LEVEL}
    for key in saved:
        del sys.modules[key]
    try:
        yield
    finally:
        for key in [k for k in sys.modules if k.split(".")[0] in _REPO_TOP_LEVEL]:
            del sys.modules[key]
        sys.modules.update(saved)


def _randomise(*modules: nn.Module, seed: int = 0) -> None:
    """Random parameters and running statistics (the authors' inits zero some; equality must cover every path)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in modules:
            for p in mod.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
            for sub in mod.modules():
                if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                    mean, var = sub.running_mean, sub.running_var
                    mean.copy_(torch.randn(mean.shape, generator=g, dtype=mean.dtype) * 0.1)
                    var.copy_(torch.rand(var.shape, generator=g, dtype=var.dtype) + 0.5)


def _assert_same_forward_backward(theirs, ours, x: torch.Tensor) -> None:
    """Equal outputs and equal input gradients (float64) for one input; parameter gradients are left
    accumulated in both modules for the caller to compare."""
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = theirs(xa), ours(xb)
    torch.testing.assert_close(yb, ya, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(ya)
    torch.autograd.backward([ya, yb], [g, g])
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-9, atol=1e-12)


def _assert_grads_equal(pairs, rtol=1e-9, atol=1e-10):
    for name, ours, theirs in pairs:
        assert ours.grad is not None and theirs.grad is not None, name
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


# --------------------------------------------------------------------------------------
# SK: the authors' code is Caffe (implus/SKNet). The first author's PyTorch collection
# (implus/PytorchInsight, resnet_sk.py) has an SK bottleneck whose two branches are a plain
# 3x3 and a grouped 3x3 (the paper: grouped 3x3 and grouped dilated 3x3) and which puts
# BatchNorm on the squeezed vector. Compared: the fuse/select computation, with their two
# branch modules placed in ours, in eval mode, their BN folded into our fc1 bias.
# --------------------------------------------------------------------------------------


class _Stop(Exception):
    pass


def _pytorchinsight_sk_bottleneck(planes: int):
    with _package_module("implus/PytorchInsight", "classification/models/imagenet", "resnet_sk") as mod:
        block = mod.Bottleneck(planes, planes)
    # feed the SK part directly: conv1/bn1 become identities (inputs are non-negative, so relu is too)
    block.conv1, block.bn1 = nn.Identity(), nn.Identity()
    return block


@pytest.mark.parametrize("shape", [(2, 7, 9), (1, 5, 5), (3, 12, 8)])
def test_sk_select_matches_pytorchinsight(shape):
    planes = 64
    theirs = _pytorchinsight_sk_bottleneck(planes).double()
    _randomise(theirs)
    theirs.eval()
    ours = SKAttention(planes).double().eval()
    # their squeeze width is planes // 16 (4 here); ours follows the paper's max(C/16, 32): use theirs
    ours.rd_channels = theirs.conv_fc1.out_channels
    ours.fc1 = nn.Conv2d(planes, ours.rd_channels, 1).double()
    ours.fc2 = nn.Conv2d(ours.rd_channels, 2 * planes, 1, bias=False).double()
    ours.branches = nn.ModuleList(
        [nn.Sequential(theirs.conv2, theirs.bn2, nn.ReLU()), nn.Sequential(theirs.conv2g, theirs.bn2g, nn.ReLU())]
    )
    bn = theirs.bn_fc1
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    with torch.no_grad():
        ours.fc1.weight.copy_(theirs.conv_fc1.weight * scale[:, None, None, None])
        ours.fc1.bias.copy_(bn.bias - scale * bn.running_mean)
        ours.fc2.weight.copy_(theirs.conv_fc2.weight)

    captured = {}

    def stop_at_conv3(mod, args):  # the SK output V is conv3's input; the rest of their block is not SK
        captured["d"] = args[0]
        raise _Stop

    theirs.conv3.register_forward_pre_hook(stop_at_conv3)
    x = torch.randn(shape[0], planes, *shape[1:], dtype=torch.float64).abs()
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    with pytest.raises(_Stop):
        theirs(xa + 0)  # their first ReLU is in place: give it a non-leaf
    y_ours = ours(xb)
    torch.testing.assert_close(y_ours, captured["d"], rtol=1e-10, atol=1e-12)

    g = torch.randn_like(y_ours)
    torch.autograd.backward([y_ours, captured["d"]], [g, g])
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-9, atol=1e-10)
    # shared branch modules: their parameters got both contributions; compare the squeeze layers
    torch.testing.assert_close(ours.fc2.weight.grad, theirs.conv_fc2.weight.grad, rtol=1e-9, atol=1e-10)
    # dL/dW_theirs = scale * dL/dW'_ours; dL/dbeta_theirs = dL/db'_ours
    torch.testing.assert_close(
        theirs.conv_fc1.weight.grad, ours.fc1.weight.grad * scale[:, None, None, None], rtol=1e-9, atol=1e-10
    )
    torch.testing.assert_close(theirs.bn_fc1.bias.grad, ours.fc1.bias.grad, rtol=1e-9, atol=1e-10)


# --------------------------------------------------------------------------------------
# Shuffle Attention: wofmanaf/SA-Net, models/sa_resnet.py, sa_layer (channels divisible by 2G)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels,groups,shape", [(256, 64, (2, 7, 9)), (64, 8, (1, 1, 1)), (96, 16, (3, 12, 5))])
def test_shuffle_matches_sa_net(channels, groups, shape):
    with _own_top_level_modules():
        mod = authors_module("wofmanaf/SA-Net", "models/sa_resnet.py", extra_sys_path=(".",))
    theirs = mod.sa_layer(channels, groups=groups).double()
    ours = ShuffleAttention(channels, groups=groups).double()
    assert ours.groups == groups
    _randomise(theirs)
    with torch.no_grad():
        for name in ("cweight", "cbias", "sweight", "sbias"):
            getattr(ours, name).copy_(getattr(theirs, name).flatten())
        ours.gn.load_state_dict(theirs.gn.state_dict())
    x = torch.randn(shape[0], channels, *shape[1:], dtype=torch.float64)
    _assert_same_forward_backward(theirs, ours, x)
    pairs = [(n, getattr(ours, n), getattr(theirs, n)) for n in ("cweight", "cbias", "sweight", "sbias")]
    for name, a, b in pairs:
        torch.testing.assert_close(a.grad, b.grad.flatten(), rtol=1e-9, atol=1e-12, msg=lambda m: f"{name}: {m}")
    _assert_grads_equal([("gn.weight", ours.gn.weight, theirs.gn.weight), ("gn.bias", ours.gn.bias, theirs.gn.bias)])


# --------------------------------------------------------------------------------------
# SGE: implus/PytorchInsight, classification/models/imagenet/resnet_sge.py, SpatialGroupEnhance.
# Their normalisation uses Tensor.std (unbiased, m - 1); the paper and ours the population
# std (m). Compared with their std call switched to the population estimator (a torch
# function mode; their code is otherwise run as is), and the deviation itself is measured.
# --------------------------------------------------------------------------------------


class _PopulationStd(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.std:
            kwargs.pop("unbiased", None)
            kwargs["correction"] = 0
        return func(*args, **kwargs)


def _sge_pair(channels: int, groups: int):
    with _package_module("implus/PytorchInsight", "classification/models/imagenet", "resnet_sge") as mod:
        theirs = mod.SpatialGroupEnhance(groups).double()
    ours = SpatialGroupEnhance(channels, groups=groups).double()
    assert ours.groups == groups
    _randomise(theirs)
    with torch.no_grad():
        ours.weight.copy_(theirs.weight.flatten())
        ours.bias.copy_(theirs.bias.flatten())
    return ours, theirs


@pytest.mark.parametrize("channels,groups,shape", [(256, 64, (2, 7, 9)), (64, 8, (1, 3, 3)), (96, 32, (3, 12, 5))])
def test_sge_matches_pytorchinsight_with_population_std(channels, groups, shape):
    ours, theirs = _sge_pair(channels, groups)
    x = torch.randn(shape[0], channels, *shape[1:], dtype=torch.float64)

    def theirs_with_population_std(t):
        with _PopulationStd():
            return theirs(t)

    _assert_same_forward_backward(theirs_with_population_std, ours, x)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad.flatten(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ours.bias.grad, theirs.bias.grad.flatten(), rtol=1e-9, atol=1e-12)


def test_sge_pytorchinsight_unbiased_std_deviation():
    """As published, their module differs from the paper's on small maps and is NaN at a 1x1 map."""
    ours, theirs = _sge_pair(64, 8)
    x = torch.randn(2, 64, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        assert (theirs(x) - ours(x)).abs().max() > 1e-3
        with pytest.warns(UserWarning, match="degrees of freedom"):
            assert torch.isnan(theirs(torch.randn(1, 64, 1, 1, dtype=torch.float64))).all()
        assert torch.isfinite(ours(torch.randn(1, 64, 1, 1, dtype=torch.float64))).all()


# --------------------------------------------------------------------------------------
# MLCA: wandahangFY/MLCA, MLCA.py, class MLCA (adaptive pooling works at any size in eager mode)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "channels,shape", [(64, (2, 10, 15)), (64, (1, 1, 1)), (64, (3, 7, 13)), (256, (2, 33, 47)), (32, (1, 3, 4))]
)
def test_mlca_matches_authors(channels, shape):
    mod = authors_module("wandahangFY/MLCA", "MLCA.py")
    theirs = mod.MLCA(channels).double()
    ours = MLCA(channels).double()
    assert ours.k_size == theirs.conv.kernel_size[0] and ours.local_size == theirs.local_size
    _randomise(theirs)
    ours.load_state_dict(theirs.state_dict())  # same names: conv (global), conv_local
    x = torch.randn(shape[0], channels, *shape[1:], dtype=torch.float64)
    _assert_same_forward_backward(theirs, ours, x)
    _assert_grads_equal(
        [(n, getattr(ours, n).weight, getattr(theirs, n).weight) for n in ("conv", "conv_local")]
    )


# --------------------------------------------------------------------------------------
# CPCA: Cuthbert-Huang/CPCANet, CPCANet/nnunet/network_architecture/CPCANet.py, RepBlock.
# Their block is conv1x1 -> GELU -> [CA -> SA] -> conv1x1 with ONE 1x1 convolution shared by the
# input projection, SA's mixing and the output projection, and their CA sums two sigmoids
# (the paper: one sigmoid of the sum). Compared: their RepBlock(x) against
# conv(ours(GELU(conv(x)))) with their conv as our SA mix and their ChannelAttention module
# placed in ours; separately, the channel attention deviation is measured.
# --------------------------------------------------------------------------------------


def _stub(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    return mod


def _cpcanet_module():
    """Their file imports nnU-Net's training framework (batchgenerators, ml_collections, thop); only
    torch layers are used by RepBlock, so those imports are stubbed while the file loads."""
    pytest.importorskip("einops")
    pytest.importorskip("timm")
    stubs = {
        "nnunet": _stub("nnunet"),
        "nnunet.utilities": _stub("nnunet.utilities"),
        "nnunet.utilities.nd_softmax": _stub("nnunet.utilities.nd_softmax", softmax_helper=None),
        "nnunet.network_architecture": _stub("nnunet.network_architecture"),
        "nnunet.network_architecture.initialization": _stub(
            "nnunet.network_architecture.initialization", InitWeights_He=None
        ),
        "nnunet.network_architecture.neural_network": _stub(
            "nnunet.network_architecture.neural_network", SegmentationNetwork=nn.Module
        ),
        "nnunet.network_configuration": _stub("nnunet.network_configuration"),
        "nnunet.network_configuration.config": _stub("nnunet.network_configuration.config", CONFIGS={}),
        "thop": _stub("thop", profile=None),
    }
    with _own_top_level_modules():
        saved_thop = sys.modules.get("thop")
        sys.modules.update(stubs)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # timm's deprecated import path in their file
                return authors_module("Cuthbert-Huang/CPCANet", "CPCANet/nnunet/network_architecture/CPCANet.py")
        finally:
            for key in stubs:
                sys.modules.pop(key, None)
            if saved_thop is not None:
                sys.modules["thop"] = saved_thop


def _cpca_pair(channels: int):
    mod = _cpcanet_module()
    theirs = mod.RepBlock(channels, channels).double()
    _randomise(theirs)
    ours = CPCA(channels).double()
    assert ours.rd_channels == theirs.ca.fc1.out_channels
    with torch.no_grad():
        ours.channel_prior.fc1.load_state_dict(theirs.ca.fc1.state_dict())
        ours.channel_prior.fc2.load_state_dict(theirs.ca.fc2.state_dict())
        ours.conv0.load_state_dict(theirs.dconv5_5.state_dict())
        for strip, k in zip(ours.strips, (7, 11, 21)):
            strip[0].load_state_dict(getattr(theirs, f"dconv1_{k}").state_dict())
            strip[1].load_state_dict(getattr(theirs, f"dconv{k}_1").state_dict())
        ours.mix.load_state_dict(theirs.conv.state_dict())
    return ours, theirs


@pytest.mark.parametrize("channels,shape", [(32, (2, 9, 13)), (64, (1, 1, 1)), (16, (3, 24, 7))])
def test_cpca_matches_cpcanet_with_their_channel_attention(channels, shape):
    ours, theirs = _cpca_pair(channels)
    ours.channel_prior = theirs.ca  # the documented CA deviation taken from their side
    x = torch.randn(shape[0], channels, *shape[1:], dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya = theirs(xa)
    yb = theirs.conv(ours(theirs.act(theirs.conv(xb))))  # their block's projections around our attention
    torch.testing.assert_close(yb, ya, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(ya)
    ya.backward(g)
    torch.testing.assert_close(torch.autograd.grad(yb, xb, g, retain_graph=True)[0], xa.grad, rtol=1e-9, atol=1e-12)
    # parameter gradients: our copies of the depthwise convolutions against theirs
    ours_params = dict(ours.named_parameters())
    pairs = [("conv0.weight", "dconv5_5.weight"), ("conv0.bias", "dconv5_5.bias")]
    for i, k in enumerate((7, 11, 21)):
        pairs += [(f"strips.{i}.0.weight", f"dconv1_{k}.weight"), (f"strips.{i}.1.bias", f"dconv{k}_1.bias")]
    grads = torch.autograd.grad(yb, [ours_params[a] for a, _ in pairs], g)
    theirs_params = dict(theirs.named_parameters())
    for (a, b), ga in zip(pairs, grads):
        torch.testing.assert_close(ga, theirs_params[b].grad, rtol=1e-9, atol=1e-12, msg=lambda m: f"{a}: {m}")


def test_cpca_channel_attention_deviation():
    """Their CA is sigmoid(MLP(avg)) + sigmoid(MLP(max)) in (0, 2); ours (the paper) sigmoid(MLP(avg) + MLP(max))."""
    ours, theirs = _cpca_pair(32)
    x = torch.randn(2, 32, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        a, b = theirs.ca(x), ours.channel_prior(x)
        assert a.shape == b.shape == (2, 32, 1, 1)
        assert (a - b).abs().max() > 0.1 and a.max() > 1 and b.max() < 1


# --------------------------------------------------------------------------------------
# LSKA: StevenLauHKHK/Large-Separable-Kernel-Attention, models/van.py, class LSKA (the unit)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def van_module():
    """Their models/van.py, imported once: its timm @register_model needs it in sys.modules."""
    pytest.importorskip("timm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm's deprecated import paths and re-registrations
        with _package_module("StevenLauHKHK/Large-Separable-Kernel-Attention", "models", "van") as mod:
            yield mod


@pytest.mark.parametrize("k_size", [7, 11, 23, 35, 41, 53])
def test_lska_matches_authors(van_module, k_size):
    mod = van_module
    channels = 16
    theirs = mod.LSKA(channels, k_size).double()
    ours = LSKA(channels, k_size=k_size).double()
    _randomise(theirs)
    ours.load_state_dict(theirs.state_dict())  # same layer names
    for shape in [(2, 13, 30), (1, 1, 1), (3, 7, 5)]:
        x = torch.randn(shape[0], channels, *shape[1:], dtype=torch.float64)
        _assert_same_forward_backward(theirs, ours, x)
    theirs_params = dict(theirs.named_parameters())
    _assert_grads_equal([(n, p, theirs_params[n]) for n, p in ours.named_parameters()])
