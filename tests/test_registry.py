"""The registry: names, aliases, metadata, registration rules, listeners, clean removal."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn

from _helpers import (  # noqa: F401
    BUILTIN_NAMES,
    USER_NAME,
    UserTestGate,
    _registry_does_not_leak,
    registry_snapshot,
    user_module_registered,
)
from yolo_attention import BAM, SE, BiFormerBlock, BiLevelRoutingAttention, DoubleAttention, registry
from yolo_attention.registry import (
    KINDS,
    add_registry_listener,
    create_attention,
    get_attention_info,
    list_attention,
    register_attention,
    unregister_attention,
)

EXPECTED_BUILTINS = {
    # name: (class, kind, arXiv id, words the paper title must contain)
    "se": (SE, "channel", "1709.01507", "Squeeze-and-Excitation"),
    "a2": (DoubleAttention, "global-context", "1810.11579", "Double Attention"),
    "bam": (BAM, "hybrid", "1807.06514", "Bottleneck Attention"),
    "bra": (BiLevelRoutingAttention, "sparse-attention", "2303.08810", "Bi-Level Routing"),
    "biformer": (BiFormerBlock, "sparse-attention", "2303.08810", "BiFormer"),
}


# Papers published without an arXiv version (cited by venue in the module's docstring): name -> title words
NO_ARXIV = {"simam": "SimAM", "mlca": "Mixed local channel attention"}  # ICML 2021 (PMLR 139); Eng. Appl. AI 2023


def _assert_consistent():
    """Every lookup key resolves to a live entry, and every entry is reachable by its name and aliases."""
    for key, canonical in registry._LOOKUP.items():
        assert canonical in registry._REGISTRY, f"stale lookup {key!r} -> {canonical!r}"
    for canonical, info in registry._REGISTRY.items():
        assert registry._LOOKUP.get(canonical) == canonical
        for alias in info.aliases:
            assert registry._LOOKUP.get(alias) == canonical, f"alias {alias!r} of {canonical!r} does not resolve"


# --------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------


def test_builtins_present_with_metadata():
    infos = {i.name: i for i in list_attention()}
    assert set(EXPECTED_BUILTINS) <= set(infos)
    for name, (cls, kind, arxiv, title_words) in EXPECTED_BUILTINS.items():
        info = infos[name]
        assert info.cls is cls and info.kind == kind and info.arxiv == arxiv, info
        assert title_words.lower() in info.paper.lower(), info.paper
        assert info.builtin


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_every_builtin_has_paper_arxiv_kind(name):
    info = get_attention_info(name)
    assert info.builtin
    assert info.paper and len(info.paper) > 10, f"{name}: missing paper title"
    if name in NO_ARXIV:
        assert info.arxiv is None and NO_ARXIV[name].lower() in info.paper.lower(), info
        assert info.citation == info.paper
    else:
        assert info.arxiv and re.fullmatch(r"\d{4}\.\d{4,5}", info.arxiv), f"{name}: bad arXiv id {info.arxiv!r}"
        assert info.citation == f"{info.paper}, arXiv:{info.arxiv}"
    assert info.kind in KINDS
    assert info.name == registry._normalise(info.name)
    assert info.yaml_name == info.cls.__name__
    d = info.as_dict()
    assert d["name"] == name and d["kind"] == info.kind and d["arxiv"] == info.arxiv and d["paper"] == info.paper
    assert d["class"].endswith(info.cls.__qualname__) and d["yaml_name"] == info.cls.__name__
    assert isinstance(d["aliases"], list)


def test_list_attention_sorted_and_unique():
    names = [i.name for i in list_attention()]
    assert names == sorted(names) and len(names) == len(set(names))


# --------------------------------------------------------------------------------------
# Lookup
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query,cls",
    [
        ("se", SE), ("SE", SE), ("Squeeze-Excite", SE), ("squeeze_excitation", SE), ("SE_Module", SE),
        ("a2", DoubleAttention), ("A2", DoubleAttention), ("Double-Attention", DoubleAttention),
        ("DOUBLE_ATTENTION", DoubleAttention), ("doubleattention", DoubleAttention), ("A2-Nets", DoubleAttention),
        ("bam", BAM), ("BAM", BAM), ("bottleneck-attention-module", BAM), ("Bottleneck_Attention", BAM),
        ("bra", BiLevelRoutingAttention), ("Bi-Level-Routing-Attention", BiLevelRoutingAttention),
        ("BiLevelRoutingAttention", BiLevelRoutingAttention), ("bi_level_routing_attention", BiLevelRoutingAttention),
        ("biformer", BiFormerBlock), ("BiFormer-Block", BiFormerBlock), ("BIFORMER_BLOCK", BiFormerBlock),
        ("  se  ", SE),
    ],
)
def test_lookup_case_dash_underscore_insensitive_and_aliases(query, cls):
    assert get_attention_info(query).cls is cls
    m = create_attention(query, 16)
    assert type(m) is cls and m.channels == 16


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_every_alias_and_class_resolves(name):
    info = get_attention_info(name)
    for alias in info.aliases:
        assert get_attention_info(alias) is info
        assert get_attention_info(alias.upper()) is info
    assert get_attention_info(info.cls) is info
    assert get_attention_info(info.cls.__name__) is info


def test_unknown_name_lists_registered_names():
    with pytest.raises(KeyError) as e:
        create_attention("no_such_attention", 16)
    msg = str(e.value)
    assert "no_such_attention" in msg
    for name in BUILTIN_NAMES:
        assert repr(name) in msg, f"{name} not listed in {msg}"


def test_unknown_name_suggests_close_match():
    # with more modules a typo may have several near names ("bamm": bam and cbam); the right one is among them
    with pytest.raises(KeyError, match=r"Did you mean \[[^\]]*'bam'"):
        get_attention_info("bamm")
    with pytest.raises(KeyError) as e:
        get_attention_info("bamm")
    assert "'se'" not in str(e.value).split("Did you mean")[1]


def test_lookup_bad_types():
    with pytest.raises(TypeError, match="string"):
        get_attention_info(3)

    class NotRegistered(nn.Module):
        def __init__(self, channels):
            super().__init__()

    with pytest.raises(KeyError, match="NotRegistered.*register_attention"):
        get_attention_info(NotRegistered)


def test_create_attention_rejects_unknown_keyword():
    with pytest.raises(TypeError) as e:
        create_attention("se", 16, reduction=16)
    msg = str(e.value)
    assert "SE" in msg and "reduction" in msg and "rd_ratio" in msg, msg


def test_create_attention_passes_keywords():
    m = create_attention("bam", 64, rd_ratio=1 / 8, dilation=2)
    assert m.rd_channels == 8 and m.dilation == 2
    m = create_attention("Double-Attention", 32, c_m=8, c_n=4)
    assert (m.c_m, m.c_n) == (8, 4)


# --------------------------------------------------------------------------------------
# Registration rules (every test restores the registry)
# --------------------------------------------------------------------------------------


@pytest.fixture
def clean_registry():
    with registry_snapshot():
        yield
    _assert_consistent()


def test_registry_consistent_at_start():
    _assert_consistent()


def test_first_argument_must_be_channels(clean_registry):
    class TakesC1(nn.Module):
        def __init__(self, c1, c2=None):
            super().__init__()

    with pytest.raises(TypeError) as e:
        register_attention("takes_c1")(TakesC1)
    msg = str(e.value)
    assert "TakesC1" in msg and "'channels'" in msg and "c1" in msg, msg

    class NoArgs(nn.Module):
        pass

    with pytest.raises(TypeError, match="NoArgs.*channels"):
        register_attention("no_args")(NoArgs)

    class KeywordOnly(nn.Module):
        def __init__(self, *, channels):
            super().__init__()

    with pytest.raises(TypeError, match="KeywordOnly.*positional"):
        register_attention("kw_only")(KeywordOnly)
    assert "takesc1" not in registry._REGISTRY and "noargs" not in registry._REGISTRY
    assert "kwonly" not in registry._REGISTRY


def test_only_modules_and_known_kinds(clean_registry):
    class NotAModule:
        def __init__(self, channels):
            pass

    with pytest.raises(TypeError, match="nn.Module"):
        register_attention("nam")(NotAModule)
    with pytest.raises(ValueError) as e:
        register_attention("x", kind="magic")
    assert "kind" in str(e.value) and "channel" in str(e.value)
    with pytest.raises(TypeError, match="name"):
        register_attention(42)


def test_duplicate_name_fails_unless_override(clean_registry):
    class OtherSE(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.channels = channels

        def forward(self, x):
            return x

    with pytest.raises(ValueError) as e:
        register_attention("se")(OtherSE)
    msg = str(e.value)
    assert "'se'" in msg and "SE" in msg and "override=True" in msg, msg
    with pytest.raises(ValueError, match="squeezeexcite"):
        register_attention("other_se", aliases=("Squeeze-Excite",))(OtherSE)
    assert get_attention_info("se").cls is SE and get_attention_info("squeeze_excite").cls is SE
    assert "otherse" not in registry._LOOKUP

    register_attention("se", kind="channel", override=True)(OtherSE)
    assert get_attention_info("se").cls is OtherSE
    assert type(create_attention("SE", 8)) is OtherSE
    # the replaced entry's aliases are gone, not left pointing at a removed entry or at the new class
    with pytest.raises(KeyError):
        get_attention_info("squeeze_excite")
    _assert_consistent()


def test_class_name_clash_is_a_duplicate(clean_registry):
    """YAMLs name modules by class name, so a second class called ``BAM`` would be ambiguous."""

    def make():
        class BAM(nn.Module):  # noqa: N801
            def __init__(self, channels):
                super().__init__()

        return BAM

    with pytest.raises(ValueError, match="bam"):
        register_attention("my_bam")(make())


def test_override_through_an_alias_leaves_no_stale_lookup(clean_registry):
    class Stealer(nn.Module):
        def __init__(self, channels):
            super().__init__()

    register_attention("stealer", aliases=("bottleneck_attention",), override=True)(Stealer)
    assert get_attention_info("bottleneck-attention").cls is Stealer
    # the whole entry it displaced is gone: every remaining lookup still resolves
    _assert_consistent()
    for key in ("bam", "bottleneckattentionmodule"):
        with pytest.raises(KeyError):
            get_attention_info(key)


def test_reregistering_the_same_class_is_idempotent(clean_registry):
    n = len(list_attention())
    register_attention("se", kind="channel", paper="Squeeze-and-Excitation Networks", arxiv="1709.01507",
                       aliases=("squeeze_excite", "squeeze_excitation", "se_module"), _builtin=True)(SE)
    assert len(list_attention()) == n
    assert get_attention_info("squeeze-excite").cls is SE


def test_bare_decorator_and_string_alias(clean_registry):
    @register_attention
    class BareGate(nn.Module):
        def __init__(self, channels):
            super().__init__()

    assert isinstance(BareGate, type), "bare @register_attention replaced the class by a function"
    assert get_attention_info("bare_gate").cls is BareGate

    @register_attention("gate2", aliases="g2x")
    class Gate2(nn.Module):
        def __init__(self, channels):
            super().__init__()

    info = get_attention_info("gate2")
    assert "g2x" in info.aliases and "g" not in registry._LOOKUP
    assert get_attention_info("G2X") is info


def test_listeners_see_existing_and_new_modules(clean_registry):
    seen = []
    add_registry_listener(seen.append)
    assert {i.name for i in seen} == {i.name for i in list_attention()}
    with user_module_registered() as name:
        assert seen[-1].name == name and seen[-1].cls is UserTestGate
    assert registry._normalise(USER_NAME) not in registry._REGISTRY


# --------------------------------------------------------------------------------------
# A user module: available by name, then removed without a trace
# --------------------------------------------------------------------------------------


def test_user_module_lifecycle():
    before_lookup = dict(registry._LOOKUP)
    with user_module_registered() as name:
        assert name in [i.name for i in list_attention()]
        info = get_attention_info("User-Test-Gate")
        assert info.cls is UserTestGate and info.kind == "custom" and not info.builtin
        assert get_attention_info("UTG") is info and get_attention_info(UserTestGate) is info
        m = create_attention("utg", 16, k_size=5)
        x = torch.randn(2, 16, 3, 4)
        assert m(x).shape == x.shape
        _assert_consistent()
    assert name not in [i.name for i in list_attention()]
    assert registry._LOOKUP == before_lookup
    with pytest.raises(KeyError):
        get_attention_info("utg")


def test_unregister_attention(clean_registry):
    info = unregister_attention("Bottleneck-Attention")
    assert info.cls is BAM
    for key in ("bam", "bottleneckattention", "bottleneckattentionmodule"):
        assert key not in registry._LOOKUP
    with pytest.raises(KeyError):
        unregister_attention("bam")
    register_attention("bam", kind="hybrid", paper=info.paper, arxiv=info.arxiv, aliases=info.aliases,
                       taps=info.taps)(BAM)
    assert get_attention_info("bottleneck_attention_module").cls is BAM


# --------------------------------------------------------------------------------------
# Attention taps (where `explain` reads a module's attention tensor)
# --------------------------------------------------------------------------------------


def test_taps_are_declared_checked_and_listed():
    from yolo_attention import AttentionTap

    info = get_attention_info("se")
    assert info.taps and info.taps[0].kind == "channel"
    assert dict(info.as_dict()["taps"][0]) == {
        "module": "gate", "kind": "channel", "name": "channel weights s", "activation": None, "layout": None
    }
    for tap in (t for i in list_attention() for t in i.taps):  # every declared submodule exists
        m = create_attention(tap_owner := next(i.name for i in list_attention() if tap in i.taps), 32)
        assert tap.module in dict(m.named_modules()), f"{tap_owner}: tap {tap.module!r} is not a submodule"
    with pytest.raises(ValueError, match="AttentionTap: argument 'kind'"):
        AttentionTap("gate", "heatmap")
    with pytest.raises(ValueError, match="AttentionTap: argument 'activation'"):
        AttentionTap("gate", "channel", activation="tanh")
    with registry_snapshot(), pytest.raises(TypeError, match="argument 'taps'"):
        register_attention("tapped_wrong", taps=["gate"])(UserTestGate)
    with registry_snapshot():
        register_attention("tapped_user", taps=AttentionTap("conv", "channel"))(UserTestGate)
        assert get_attention_info("tapped_user").taps == (AttentionTap("conv", "channel"),)
