"""Official (SHI-Labs/StyleNAT) checkpoints -> our snapshots.

The reference side is written from scratch in tests/reference_model.py: `make_reference_g` lays out a generator state dict under
the reference module names (legacy split-head `rpb0`/`rpb1` or Hydra `rpb.{i}`), and `RefForward` runs
it directly from those raw tensors (qkv as (3, heads, head_dim), heads group 0 first, a brute-force NA
loop with NATTEN's window rule and key - query + (k - 1) RPB indexing, the 4x4 MHSA bias looked up through
the reference's flipped `relative_position_index`). Agreement with our converted modules is what pins the
head order and the RPB orientation.
"""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import stylenat
from stylenat import reference
from stylenat.files import atomic_save
from stylenat.models.build import build_generator
from stylenat.models.generator import Generator, GeneratorConfig
from stylenat.snapshot import CheckpointError
from tests.reference_model import (
    PAPER_256,
    TINY,
    RefForward,
    converted,
    make_reference_g,
    reference_rp_index,
    small_reference_d,
    to_minus_one_one,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_legacy():
    return make_reference_g(TINY, "legacy", seed=1)


# ------------------------------------------------------------------------------------------ tests
def test_flipped_index_is_key_minus_query_and_matches_ours():
    from stylenat.models.attention import relative_position_index

    idx = reference_rp_index(4)
    for q in range(16):
        for k in range(16):
            dy, dx = k // 4 - q // 4, k % 4 - q % 4  # key - query
            assert idx[q, k] == (dy + 3) * 7 + (dx + 3)
    assert torch.equal(idx, relative_position_index(4))
    assert torch.equal(idx, reference.reference_relative_position_index(4))


def test_tiny_every_tensor_lands(tiny_legacy):
    sd = tiny_legacy
    snap, _ = converted(sd)
    cfg, ours = snap["model_config"], snap["state_dict"]
    assert cfg["resolution"] == 32 and cfg["z_dim"] == cfg["w_dim"] == 32 and cfg["n_mlp"] == 2
    assert cfg["channels"] == [64, 64, 32, 32] and cfg["mlp_ratio"] == 4.0
    assert cfg["kernels"][1:] == [[5], [5, 3], [3]] and cfg["dilations"] == [[1], [1], [1, 2], [1, 4]]
    assert cfg["output_normalization"] == "imagenet" and cfg["use_rpb"] is True
    assert (
        snap["meta"]["reference_container"] == "legacy"
        and snap["meta"]["reference_attention_layout"] == "legacy"
    )
    assert snap["meta"]["conversion_version"] == reference.CONVERSION_VERSION
    expect = {"w_avg": None}
    for i in range(2):
        for p in ("weight", "bias"):
            expect[f"mapping_net.layers.{i}.{p}"] = sd[f"style.{i + 1}.{p}"]
    expect["const"] = sd["input.input"].permute(0, 2, 3, 1)
    for s in range(4):
        for j in range(2):
            o, r = f"stages.{s}.blocks.{j}.", f"layers.{s}.blocks.{j}."
            for p in ("weight", "bias"):
                for n in ("norm1", "norm2"):
                    expect[f"{o}{n}.affine.{p}"] = sd[f"{r}{n}.style.{p}"]
                for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
                    expect[f"{o}{m}.{p}"] = sd[f"{r}{m}.{p}"]
        if s < 3:
            for a, b in (
                ("norm.weight", "norm.weight"),
                ("norm.bias", "norm.bias"),
                ("proj.weight", "reduction.weight"),
                ("alpha", "alpha"),
            ):
                expect[f"stages.{s}.upsample.{a}"] = sd[f"layers.{s}.upsample.{b}"]
        expect[f"to_rgbs.{s}.conv.weight"] = sd[f"to_rgbs.{s}.conv.weight"]
        expect[f"to_rgbs.{s}.conv.bias"] = sd[f"to_rgbs.{s}.conv.bias"]
        expect[f"to_rgbs.{s}.bias"] = sd[f"to_rgbs.{s}.bias"].view(3)
    for j in range(2):
        r = f"layers.{{}}.blocks.{j}.attn."
        expect[f"stages.0.blocks.{j}.attn.rpb"] = sd[r.format(0) + "rpb"]  # same orientation after the flip
        expect[f"stages.1.blocks.{j}.attn.rpb.0"] = torch.cat(
            [sd[r.format(1) + "rpb0"], sd[r.format(1) + "rpb1"]]
        )
        for s in (2, 3):
            expect[f"stages.{s}.blocks.{j}.attn.rpb.0"] = sd[r.format(s) + "rpb0"]
            expect[f"stages.{s}.blocks.{j}.attn.rpb.1"] = sd[r.format(s) + "rpb1"]
    assert set(ours) == set(expect)
    for k, v in expect.items():
        if v is not None:
            assert torch.equal(ours[k], v), k
    assert ours["stages.1.blocks.0.attn.rpb.0"].shape == (4, 9, 9)  # one group of 4 heads at 8x8


def test_w_avg_is_the_seeded_mapping_mean(tiny_legacy):
    snap = reference.reference_to_snapshot(
        {"g_ema": tiny_legacy, "g": {}, "d": {}}, w_avg_samples=300, seed=7
    )
    z = torch.randn(300, 32, generator=torch.Generator().manual_seed(7))
    expect = RefForward(tiny_legacy, TINY, "legacy").mapping(z).mean(0)
    torch.testing.assert_close(snap["state_dict"]["w_avg"], expect, rtol=1e-5, atol=1e-4)
    assert snap["meta"]["w_avg_samples"] == 300 and snap["meta"]["w_avg_seed"] == 7


@pytest.mark.parametrize("layout", ["legacy", "new"])
def test_round_trip_is_identity(layout):
    sd = make_reference_g(TINY, layout, seed=2)
    snap, _ = converted(sd, layout)
    assert snap["meta"]["reference_attention_layout"] == layout
    assert snap["meta"]["reference_container"] == layout
    back = reference.snapshot_to_reference(snap, layout=layout)
    assert set(back) == set(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and torch.equal(back[k], sd[k]), k
    again = reference.reference_to_snapshot(reference.reference_checkpoint(back, layout), w_avg_samples=64)
    assert again["model_config"] == snap["model_config"]
    for k, v in snap["state_dict"].items():
        assert torch.equal(again["state_dict"][k], v), k
    # and across layouts: the legacy 8x8 halves merge into one group and split back
    other = "new" if layout == "legacy" else "legacy"
    cross = reference.snapshot_to_reference(snap, layout=other)
    assert set(cross) == set(make_reference_g(TINY, other, seed=0))
    again = reference.reference_to_snapshot(reference.reference_checkpoint(cross, other), w_avg_samples=64)
    for k, v in snap["state_dict"].items():
        assert torch.equal(again["state_dict"][k], v), k


def test_ours_to_reference_to_ours_from_a_fresh_generator():
    G = build_generator(
        {
            "resolution": 32,
            "z_dim": 32,
            "w_dim": 32,
            "n_mlp": 2,
            "channels": [64, 64, 32, 32],
            "kernels": TINY["kernels"],
            "dilations": TINY["dilations"],
        }
    )
    with torch.no_grad():
        for p in G.parameters():
            p.copy_(torch.randn_like(p))
    snap = {"model_config": G.model_config, "state_dict": G.state_dict()}
    ref = reference.snapshot_to_reference(snap, "legacy")
    back = reference.reference_to_snapshot(ref, w_avg_samples=0)  # a bare reference G state dict works too
    assert back["meta"]["reference_container"] == "bare"
    for k, v in G.state_dict().items():
        if k != "w_avg":
            assert torch.equal(back["state_dict"][k], v), k


def test_paper_256_conversion_on_cpu():
    sd = make_reference_g(PAPER_256, "legacy", seed=3)
    assert (
        sum(
            v.numel()
            for k, v in sd.items()
            if not k.endswith(("relative_position_index", "_float_tensor", "upsample.kernel"))
        )
        == 48_921_000
    )
    snap = reference.reference_to_snapshot({"g": sd, "d": {}, "g_ema": sd}, w_avg_samples=16)
    cfg = snap["model_config"]
    paper = GeneratorConfig(resolution=256)
    assert (
        cfg["channels"] is None
        and cfg["channel_multiplier"] == 2
        and cfg["min_heads"] == 4
        and cfg["head_channels"] == 32
    )
    assert cfg["kernels"] == paper.kernels[:7] and cfg["dilations"] == paper.dilations[:7]
    with torch.device("meta"):
        G = Generator(GeneratorConfig.from_dict(cfg))
    assert sum(p.numel() for p in G.parameters()) == 48_921_000
    ours = snap["state_dict"]
    assert set(ours) == set(G.state_dict())
    assert torch.equal(
        ours["stages.1.blocks.1.attn.rpb.0"],
        torch.cat([sd["layers.1.blocks.1.attn.rpb0"], sd["layers.1.blocks.1.attn.rpb1"]]),
    )
    assert ours["stages.1.blocks.1.attn.rpb.0"].shape == (16, 13, 13)
    assert torch.equal(ours["stages.6.blocks.0.attn.rpb.1"], sd["layers.6.blocks.0.attn.rpb1"])  # d=32 heads
    back = reference.snapshot_to_reference(snap, "legacy")
    assert set(back) == set(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k


def test_block_forwards_match_the_reference(tiny_legacy):
    """One MHSA block (4x4), the 8x8 block (two legacy halves -> one group) and the 16x16 Hydra block."""
    sd = tiny_legacy
    ref = RefForward(sd, TINY, "legacy")
    _, G = converted(sd)
    gen = torch.Generator().manual_seed(5)
    w = ref.mapping(torch.randn(2, 32, generator=gen))
    for s, size, c in ((0, 4, 64), (1, 8, 64), (2, 16, 32)):
        x = torch.randn(2, size, size, c, generator=gen)
        with torch.no_grad():
            ours = G.stages[s].blocks[1](x, w)
        torch.testing.assert_close(ours, ref.block(s, 1, x, w), rtol=1e-4, atol=1e-4)
        # the attention alone, so a head-order or bias-orientation error cannot hide behind the MLP
        h = ref.adain(f"layers.{s}.blocks.1.norm1.", x, w)
        expect = (
            ref.mhsa(f"layers.{s}.blocks.1.attn.", h, 4)
            if s == 0
            else ref.na(f"layers.{s}.blocks.1.attn.", h, s)
        )
        with torch.no_grad():
            torch.testing.assert_close(G.stages[s].blocks[1].attn(h), expect, rtol=1e-4, atol=1e-4)


def test_head_order_and_orientation_are_not_vacuous(tiny_legacy):
    """Swapping the legacy halves or transposing the MHSA table changes the output: the test above bites."""
    sd = dict(tiny_legacy)
    _, G = converted(sd)
    ref = RefForward(sd, TINY, "legacy")
    gen = torch.Generator().manual_seed(6)
    w = ref.mapping(torch.randn(1, 32, generator=gen))
    for s, size, c in ((0, 4, 64), (2, 16, 32)):
        x = torch.randn(1, size, size, c, generator=gen)
        bad = dict(sd)
        p = f"layers.{s}.blocks.0.attn."
        if s == 0:
            bad[p + "rpb"] = sd[p + "rpb"].transpose(1, 2)
        else:
            bad[p + "qkv.weight"] = sd[p + "qkv.weight"].view(3, 4, 8, 32).flip(1).reshape(96, 32)
        with torch.no_grad():
            assert not torch.allclose(
                G.stages[s].blocks[0](x, w), RefForward(bad, TINY, "legacy").block(s, 0, x, w), atol=1e-3
            )


def test_full_generator_matches_the_reference_forward(tiny_legacy):
    sd = tiny_legacy
    _, G = converted(sd)
    z = torch.randn(2, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        img = G(z, truncation_psi=1.0, truncation_cutoff=None)
        expect = RefForward(sd, TINY, "legacy")(z)
    assert img.shape == (2, 3, 32, 32) and img.dtype == torch.float32
    torch.testing.assert_close(
        G.synthesis(G.mapping(z)), expect, rtol=1e-4, atol=1e-4 * expect.abs().max().item()
    )
    torch.testing.assert_close(
        img, to_minus_one_one(expect), rtol=1e-4, atol=1e-4 * expect.abs().max().item()
    )


def test_reindexes_an_unflipped_index_buffer(tiny_legacy):
    """A (Swin-style) query - key buffer is honoured: the converted model gives the same MHSA output."""
    sd = dict(tiny_legacy)
    for j in range(2):
        sd[f"layers.0.blocks.{j}.attn.relative_position_index"] = torch.flipud(
            torch.fliplr(reference_rp_index(4))
        )
    snap, G = converted(sd)
    assert snap["meta"]["reference_rp_index"] == ["other (re-indexed)"]
    x = torch.randn(2, 4, 4, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            G.stages[0].blocks[0].attn(x),
            RefForward(sd, TINY, "legacy").mhsa("layers.0.blocks.0.attn.", x, 4),
            rtol=1e-4,
            atol=1e-4,
        )


def test_load_generator_on_snapshot_and_raw_reference_file(tmp_path, tiny_legacy):
    raw = tmp_path / "FFHQ_tiny.pt"
    torch.save({"g": tiny_legacy, "d": {}, "g_ema": tiny_legacy}, raw)
    snap = reference.load_reference(raw, w_avg_samples=64)
    assert snap["meta"]["source"] == str(raw) and len(snap["meta"]["source_sha256"]) == 64
    atomic_save(snap, tmp_path / "snap.pt")
    z = torch.randn(3, 32, generator=torch.Generator().manual_seed(8))
    expect = to_minus_one_one(RefForward(tiny_legacy, TINY, "legacy")(z))
    for path in (tmp_path / "snap.pt", raw):
        G = stylenat.load_generator(path)
        assert G.z_dim == 32
        with torch.no_grad():
            img = G(z, truncation_psi=1.0, truncation_cutoff=None)
        assert img.shape == (3, 3, 32, 32) and img.dtype == torch.float32
        torch.testing.assert_close(img, expect, rtol=1e-4, atol=1e-3)
    assert torch.load(tmp_path / "snap.pt", weights_only=True)["format"] == "stylenat.snapshot"




def run_script_in_process(*args):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "convert_checkpoint_script", ROOT / "scripts" / "convert_checkpoint.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as info:
        module.main([str(a) for a in args])
    return str(info.value.code)


def test_new_container_with_argparse_namespace_and_script(tmp_path):
    sd = make_reference_g(TINY, "new", seed=9)
    src = tmp_path / "000100.pt"
    args = argparse.Namespace(size=32, lr=2e-4)
    torch.save(reference.reference_checkpoint(sd, "new", d_state_dict=small_reference_d(), args=args), src)
    with pytest.raises(Exception, match="Namespace"):
        torch.load(src, weights_only=True)  # plain safe loading refuses the pickled Namespace
    data = reference.read_reference_checkpoint(src)
    assert isinstance(data["args"], argparse.Namespace) and data["args"].size == 32
    dst = tmp_path / "out" / "snap.pt"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "convert_checkpoint.py"),
            str(src),
            str(dst),
            "--w-avg-samples",
            "50",
            "--seed",
            "3",
            "--dilations",
            "1",
            "1",
            "1,2",
            "1,4",
            "--training-state",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "wrote" in run.stdout
    snap = torch.load(dst, weights_only=True)
    assert snap["meta"]["reference_container"] == "new" and snap["meta"]["dilations_from"] == "override"
    assert snap["meta"]["w_avg_seed"] == 3 and snap["meta"]["w_avg_samples"] == 50
    train = torch.load(tmp_path / "out" / "snap.train.pt", weights_only=True)
    assert set(train) >= {"G", "G_ema", "D", "model_config", "discriminator_config"}
    G = stylenat.load_generator(dst)
    z = torch.randn(1, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            G(z), to_minus_one_one(RefForward(sd, TINY, "new")(z)), rtol=1e-4, atol=1e-3
        )

    # error paths (in-process: same main(), no second interpreter start)
    msg = run_script_in_process(tmp_path / "nope.pt", tmp_path / "x.pt")
    assert msg.startswith("error: ") and "does not exist" in msg
    msg = run_script_in_process(src, dst)
    assert msg.startswith("error: ") and "exists" in msg
    msg = run_script_in_process(src, tmp_path / "y.pt", "--dilations", "1", "x")
    assert msg.startswith("error: cannot parse --dilations")
    torch.save({"foo": torch.zeros(1)}, tmp_path / "foo.pt")
    msg = run_script_in_process(tmp_path / "foo.pt", tmp_path / "y.pt")
    assert msg.startswith("error: ") and "not a StyleNAT reference checkpoint" in msg and "['foo']" in msg
    assert not (tmp_path / "y.pt").exists()


def test_foreign_globals_are_refused_with_a_way_forward(tmp_path):
    from fractions import Fraction

    src = tmp_path / "odd.pt"
    torch.save({"g_ema": {}, "args": Fraction(1, 3)}, src)
    with pytest.raises(CheckpointError, match=r"fractions\.Fraction.*weights_only=False"):
        reference.read_reference_checkpoint(src)


def test_training_weights_include_the_discriminator():
    sd = make_reference_g(TINY, "legacy", seed=10)
    d_sd = small_reference_d()
    assert any(k.endswith("weight_orig") for k in d_sd) and any(k.endswith("weight_u") for k in d_sd)
    g_train = make_reference_g(TINY, "legacy", seed=12)
    out = reference.reference_to_training_weights({"g": g_train, "g_ema": sd, "d": d_sd}, w_avg_samples=16)
    assert set(out["D"]) == set(d_sd) and all(torch.equal(out["D"][k], v) for k, v in d_sd.items())
    assert out["discriminator_config"]["channels"] == {32: 32, 8: 32, 4: 32}
    assert set(out["G"]) == set(out["G_ema"])
    assert torch.equal(out["G"]["const"], g_train["input.input"].permute(0, 2, 3, 1))
    assert torch.equal(out["G_ema"]["const"], sd["input.input"].permute(0, 2, 3, 1))
    from stylenat.models.build import build_discriminator

    D = build_discriminator(out["discriminator_config"], 32)
    D.load_state_dict(out["D"])
    bad = dict(d_sd)
    bad["dwt.ll"] = torch.ones(2, 2)
    with pytest.raises(CheckpointError, match=r"constant buffer 'dwt\.ll'"):
        reference.reference_to_training_weights({"g": sd, "g_ema": sd, "d": bad}, w_avg_samples=0)
    bad = dict(d_sd)
    del bad["final_linear.2.weight_v"]
    with pytest.raises(CheckpointError, match=r"discriminator: missing key 'final_linear\.2\.weight_v'"):
        reference.reference_to_training_weights({"g": sd, "g_ema": sd, "d": bad}, w_avg_samples=0)


# ------------------------------------------------------------------------------------------ errors
def test_not_a_stylenat_checkpoint(tmp_path):
    with pytest.raises(
        CheckpointError, match=r"not a StyleNAT reference checkpoint \(top-level keys: \['foo', 'step'\]"
    ):
        reference.reference_to_snapshot({"foo": torch.zeros(1), "step": 3}, source="x.pt")
    stylegan2 = {
        "g_ema": {
            "style.1.weight": torch.zeros(2, 2),
            "input.input": torch.zeros(1, 2, 4, 4),
            "conv1.conv.weight": torch.zeros(1),
        },
        "g": {},
        "d": {},
        "g_optim": {},
        "d_optim": {},
    }
    with pytest.raises(CheckpointError, match=r"'d', 'd_optim', 'g', 'g_ema', 'g_optim'.*StyleGAN2"):
        reference.reference_to_snapshot(stylegan2, source="sg2.pt")
    path = tmp_path / "random.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match=r"not a StyleNAT checkpoint \(top-level keys: \['weights'\]"):
        stylenat.load_generator(path)


def test_truncated_file(tmp_path, tiny_legacy):
    path = tmp_path / "full.pt"
    torch.save({"g": tiny_legacy, "d": {}, "g_ema": tiny_legacy}, path)
    data = path.read_bytes()
    half = tmp_path / "half.pt"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"half\.pt is not a readable checkpoint \(truncated"):
        reference.read_reference_checkpoint(half)
    with pytest.raises(CheckpointError, match=r"half\.pt is not a readable checkpoint \(truncated"):
        stylenat.load_generator(half)


def test_missing_key_is_named(tiny_legacy):
    sd = dict(tiny_legacy)
    del sd["layers.2.blocks.1.mlp.fc2.bias"]
    with pytest.raises(
        CheckpointError, match=r"^ckpt\.pt: missing key 'layers\.2\.blocks\.1\.mlp\.fc2\.bias'$"
    ):
        reference.reference_to_snapshot({"g_ema": sd}, source="ckpt.pt")
    sd = dict(tiny_legacy)
    del sd["layers.1.blocks.0.attn.rpb1"]
    with pytest.raises(CheckpointError, match=r"missing key 'layers\.1\.blocks\.0\.attn\.rpb1'"):
        reference.reference_to_snapshot({"g_ema": sd}, source="ckpt.pt")


def test_wrong_shape_names_key_and_both_shapes(tiny_legacy):
    sd = dict(tiny_legacy)
    sd["layers.1.blocks.1.attn.proj.weight"] = torch.zeros(64, 65)
    with pytest.raises(
        CheckpointError,
        match=r"key 'layers\.1\.blocks\.1\.attn\.proj\.weight' has shape \[64, 65\] but expected \[64, 64\]",
    ):
        reference.reference_to_snapshot({"g_ema": sd}, source="ckpt.pt")
    sd = dict(tiny_legacy)
    sd["to_rgbs.2.bias"] = torch.zeros(3)
    with pytest.raises(
        CheckpointError, match=r"key 'to_rgbs\.2\.bias' has shape \[3\] but expected \[1, 3, 1, 1\]"
    ):
        reference.reference_to_snapshot({"g_ema": sd}, source="ckpt.pt")
    sd = dict(tiny_legacy)
    sd["layers.2.blocks.1.attn.rpb1"] = torch.zeros(2, 9, 9)  # kernel 5 where the config (from block 0) has 3
    with pytest.raises(
        CheckpointError,
        match=r"key 'layers\.2\.blocks\.1\.attn\.rpb1' has shape \[2, 9, 9\] but expected \[2, 5, 5\]",
    ):
        reference.reference_to_snapshot({"g_ema": sd}, source="ckpt.pt")
    sd = dict(tiny_legacy)
    sd["layers.3.blocks.0.attn.rpb0"] = torch.zeros(3, 5, 5)  # 3 + 2 heads where qkv says 4
    with pytest.raises(CheckpointError, match=r"'layers\.3\.blocks\.0\.attn\.rpb0' \[3, 5, 5\].*5 heads"):
        reference.reference_to_snapshot({"g_ema": sd}, source="ckpt.pt")


def test_unexpected_key_and_bad_blur_kernel(tiny_legacy):
    sd = dict(tiny_legacy, **{"layers.0.blocks.0.gamma1": torch.ones(64)})
    with pytest.raises(CheckpointError, match=r"unexpected key 'layers\.0\.blocks\.0\.gamma1'"):
        reference.reference_to_snapshot({"g_ema": sd})
    sd = dict(tiny_legacy, **{"to_rgbs.0.upsample.kernel": torch.ones(4, 4) / 4})
    with pytest.raises(
        CheckpointError, match=r"'to_rgbs\.0\.upsample\.kernel' is not the \[1, 3, 3, 1\] blur"
    ):
        reference.reference_to_snapshot({"g_ema": sd})


def test_dilation_override_and_unknown_group_count():
    sd = make_reference_g(
        dict(TINY, kernels=[[3], [5], [5], [3]], dilations=[[1], [1], [1, 2, 3], [1, 4]]), "legacy", seed=11
    )
    with pytest.raises(CheckpointError, match=r"stage 16x16 has 3 attention groups.*--dilations"):
        reference.reference_to_snapshot({"g_ema": sd})
    snap = reference.reference_to_snapshot(
        {"g_ema": sd}, dilations=[[1], [1], [1, 2, 3], [1, 4]], w_avg_samples=0
    )
    assert snap["model_config"]["dilations"][2] == [1, 2, 3]
    assert (
        snap["meta"]["reference_attention_layout"] == "mixed"
    )  # the reference's NATLayer rule: >2 groups -> Hydra
