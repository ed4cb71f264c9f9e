"""Backbone presets and the velocity face: shapes, the t convention, labels, counts, specs."""

from __future__ import annotations

import json

import pytest
import torch

from prunekit.errors import PrunekitError
from prunekit_lfm.models import PRESETS, TIME_SCALE, build_model, model_from_config

torch.set_num_threads(1)


def _randomize(model, seed=1, std=0.05):
    """Fresh DiTs output 0 (adaLN-Zero); random weights make outputs informative."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


@pytest.mark.parametrize("spec", ["tiny", "unet-tiny"])
@pytest.mark.parametrize("num_classes", [0, 3])
def test_velocity_has_the_shape_of_x_and_none_means_the_null_label(spec, num_classes):
    m = _randomize(build_model(spec, sample_size=8, in_channels=4, num_classes=num_classes)).eval()
    x = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0, 1, 5)
    v = m(x, t)
    assert v.shape == x.shape and torch.isfinite(v).all()
    assert m.null_label == num_classes
    torch.testing.assert_close(m(x, t, torch.full((5,), num_classes)), v, rtol=0, atol=0)
    if num_classes:
        assert not torch.allclose(m(x, t, torch.zeros(5, dtype=torch.long)), v)


def test_scalar_t_broadcasts_like_a_vector_and_matters():
    m = _randomize(build_model("tiny", sample_size=4, in_channels=2)).eval()
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(m(x, 0.25), m(x, torch.full((3,), 0.25)), rtol=0, atol=0)
    assert not torch.allclose(m(x, 0.25), m(x, 0.75))


class _Recorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = {}

    def forward(self, x, timestep=None, class_labels=None, return_dict=True):
        self.seen = {"timestep": timestep, "class_labels": class_labels}
        return (torch.zeros_like(x),)


def test_backbone_receives_t_times_1000_and_the_labels():
    m = build_model("tiny", sample_size=4, in_channels=2, num_classes=5)
    m.net = _Recorder()
    t = torch.tensor([0.0, 0.5, 1.0])
    m(torch.zeros(3, 2, 4, 4), t, torch.tensor([1, 2, 5]))
    assert TIME_SCALE == 1000.0
    assert m.net.seen["timestep"].tolist() == [0.0, 500.0, 1000.0]
    assert m.net.seen["class_labels"].tolist() == [1, 2, 5]
    m(torch.zeros(2, 2, 4, 4), 0.1)
    assert m.net.seen["class_labels"].tolist() == [5, 5]


def test_no_internal_label_dropout_and_global_rng_untouched_in_train_mode():
    m = _randomize(build_model("tiny", sample_size=4, in_channels=2, num_classes=3)).train()
    x = torch.randn(64, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.arange(64) % 3
    state = torch.get_rng_state()
    a, b = m(x, 0.3, y), m(x, 0.3, y)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_fresh_dit_predicts_zero_velocity_adaln_zero():
    m = build_model("tiny", sample_size=4, in_channels=2)
    assert torch.count_nonzero(m(torch.randn(2, 2, 4, 4), 0.5)) == 0


def test_seeded_build_is_reproducible_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    a = build_model("tiny", sample_size=4, in_channels=4, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    b = build_model("tiny", sample_size=4, in_channels=4, seed=3)
    c = build_model("tiny", sample_size=4, in_channels=4, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_config_dict_is_json_and_rebuilds_the_same_model():
    m = build_model("unet-tiny", sample_size=8, in_channels=4, num_classes=2, seed=7)
    cfg = json.loads(json.dumps(m.config_dict()))
    r = model_from_config(cfg)
    assert (r.sample_size, r.in_channels, r.num_classes, r.preset) == (8, 4, 2, "unet-tiny")
    sa, sr = m.state_dict(), r.state_dict()
    assert sa.keys() == sr.keys() and all(torch.equal(sa[k], sr[k]) for k in sa)
    assert build_model(cfg, sample_size=8, in_channels=4, num_classes=2).spec == m.spec


def test_dit_blocks_share_one_timestep_and_label_embedder():
    m = build_model("small", sample_size=4, in_channels=4)
    blocks = m.net.transformer_blocks
    shared = list(blocks[0].norm1.emb.parameters())
    assert all(all(p is q for p, q in zip(b.norm1.emb.parameters(), shared, strict=True)) for b in blocks)


def test_functional_call_keeps_the_shared_embedder_registered():
    # torch.func.functional_call swaps parameters in and back out by name; the embedder
    # shared by every block must come back registered once, with its own tensors.
    m = _randomize(build_model("tiny", sample_size=4, in_channels=4))
    names, keys = [n for n, _ in m.named_parameters()], list(m.state_dict())
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x, t = torch.randn(2, 4, 4, 4), torch.rand(2)
    zeros = {n: torch.zeros_like(p) for n, p in m.named_parameters()}
    assert torch.func.functional_call(m, zeros, (x, t)).abs().max() == 0  # the zeros were used
    assert [n for n, _ in m.named_parameters()] == names and list(m.state_dict()) == keys
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    shared = list(m.net.transformer_blocks[0].norm1.emb.parameters())
    assert all(isinstance(p, torch.nn.Parameter) for p in m.parameters())
    assert all(all(p is q for p, q in zip(b.norm1.emb.parameters(), shared, strict=True))
               for b in m.net.transformer_blocks)
    assert not torch.equal(m(x, t), torch.zeros_like(x))


# The DiT paper's Table 4 (256x256 images = 32x32x4 latents, 1000 classes): params in M.
PAPER_PARAMS = {"DiT-S/2": 33.0, "DiT-B/2": 130.5, "DiT-L/2": 458.0, "DiT-XL/2": 675.0}


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_dit_presets_match_the_paper_parameter_counts(name):
    m = build_model(name, sample_size=32, in_channels=4, num_classes=1000, device="meta")
    assert m.num_params() / 1e6 == pytest.approx(PAPER_PARAMS[name], rel=0.01)
    n = m.net.config
    width = n.num_attention_heads * n.attention_head_dim
    depth_width_heads = {"DiT-S/2": (12, 384, 6), "DiT-B/2": (12, 768, 12),
                         "DiT-L/2": (24, 1024, 16), "DiT-XL/2": (28, 1152, 16)}[name]
    assert (n.num_layers, width, n.num_attention_heads, n.patch_size) == (*depth_width_heads, 2)


def _flops(name, size=8):
    from prunekit_lfm.cost import forward_flops

    m = build_model(name, sample_size=size, in_channels=4, device="meta")
    return forward_flops(m, 1, (4, size, size), device="meta")


def test_cpu_presets_give_a_coarse_fine_pair_with_at_least_8x_flops():
    assert _flops("small") >= 8 * _flops("tiny")
    assert 2e5 < build_model("tiny", sample_size=8, in_channels=4).num_params() < 1e6


def test_spec_from_json_file_with_preset_and_overrides(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"preset": "tiny", "num_layers": 3}))
    m = build_model(str(path), sample_size=4, in_channels=4)
    assert len(m.net.transformer_blocks) == 3 and m.preset == "tiny"
    path.write_text(json.dumps({"backbone": "dit", "num_layers": 1, "num_attention_heads": 2,
                                "attention_head_dim": 8}))
    assert build_model(str(path), sample_size=4, in_channels=4).net.config.num_layers == 1


@pytest.mark.parametrize("spec,message", [
    ("DiT-Q/2", "not a preset"),
    ({"backbone": "mlp"}, "backbone"),
    ({"preset": "nope"}, "unknown model preset"),
    ({"preset": "tiny", "sample_size": 16}, "sample_size=16 but the data needs 4"),
    ({"preset": "tiny", "patch_size": 3}, "not divisible by the DiT patch size 3"),
    ({"preset": "tiny", "num_layerz": 3}, "invalid model spec"),
])
def test_bad_specs_are_prunekit_errors(spec, message):
    with pytest.raises(PrunekitError, match=message):
        build_model(spec, sample_size=4, in_channels=4)


def test_bad_json_file_is_a_prunekit_error(tmp_path):
    path = tmp_path / "m.json"
    path.write_text("{not json")
    with pytest.raises(PrunekitError, match="not valid JSON"):
        build_model(str(path), sample_size=4, in_channels=4)


def test_every_preset_is_listed_with_a_backbone():
    assert {"tiny", "small", "DiT-S/2", "DiT-B/2", "DiT-L/2", "DiT-XL/2", "unet", "unet-tiny"} <= set(PRESETS)
    assert all(p["backbone"] in ("dit", "unet") for p in PRESETS.values())


def test_installed_diffusers_is_a_tested_release_with_the_dit_internals_we_tie():
    """Fails loudly on a diffusers release outside the tested range (see docs/architecture.md)."""
    import diffusers
    from packaging.version import Version

    from prunekit_lfm.models import DIFFUSERS_TESTED, check_dit_internals

    lo, hi = map(Version, DIFFUSERS_TESTED)
    assert lo <= Version(diffusers.__version__) < hi, (
        f"diffusers {diffusers.__version__} is outside the tested range {DIFFUSERS_TESTED}: check "
        "prunekit_lfm.models._share_dit_embedder and _dit_init, then widen the pin in pyproject.toml"
    )
    model = build_model("tiny", sample_size=4, in_channels=4, num_classes=3)
    check_dit_internals(model.net)  # every path the tying and init reach into exists
    del model.net.transformer_blocks[1].norm1.emb  # what a release that moved the embedder looks like
    with pytest.raises(PrunekitError, match=r"diffusers .* changed the DiT internals.*norm1\.emb"):
        check_dit_internals(model.net)
