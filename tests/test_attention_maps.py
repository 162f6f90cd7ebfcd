"""stylenat.attention_maps and scripts/attention_maps.py.

The maps must be the weights the layer really used. So the test side is written from scratch: its own
window rule (a group's members listed, the window slid inward at the borders), a brute-force softmax per
head and key, and the layer's own output rebuilt from the returned weights (sum of weight x value over the
window equals what ``attend`` computed, through the real NA op).
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import stylenat
from stylenat import attention_maps as am
from stylenat.models.attention import HydraNeighborhoodAttention
from stylenat.models.build import build_generator
from stylenat.sampling import generate_images
from stylenat.snapshot import save_snapshot
from tests.reference_model import TINY as REFERENCE_TINY
from tests.reference_model import make_reference_g
from tests.tiny import TINY_ATTENTION32

ROOT = Path(__file__).resolve().parents[1]
TINY = TINY_ATTENTION32
# corners, edges and the inside of a 12 x 10 map: the windows of most of these are shifted inward
QUERIES = [(0, 0), (11, 9), (0, 5), (6, 0), (5, 4), (11, 3), (10, 8), (1, 9)]


# ------------------------------------------------------------------------------ the test's own maths
def axis_window(i, length, kernel, dilation):
    """Key positions and RPB indices of position i along one axis, by listing i's dilation group."""
    members = list(range(i % dilation, length, dilation))
    j = members.index(i)
    start = min(max(j - kernel // 2, 0), len(members) - kernel)
    return members[start : start + kernel], [start + m - j + kernel - 1 for m in range(kernel)]


def brute_weights(q, k, rpb, kernel, dilation, y, x):
    """q, k [heads, H, W, D] (unscaled), rpb [heads, 2k-1, 2k-1] or None -> weights [heads, k, k], keys
    [k, k, 2], one logit at a time."""
    heads, height, width, dim = q.shape
    rpb = None if rpb is None else rpb.detach()
    rows, rel_rows = axis_window(y, height, kernel, dilation)
    cols, rel_cols = axis_window(x, width, kernel, dilation)
    weights = torch.empty(heads, kernel, kernel)
    for h in range(heads):
        logits = []
        for ky, ry in zip(rows, rel_rows):
            for kx, rx in zip(cols, rel_cols):
                logit = float(q[h, y, x] @ k[h, ky, kx]) / dim**0.5
                logits.append(logit + (float(rpb[h, ry, rx]) if rpb is not None else 0.0))
        weights[h] = torch.tensor(logits, dtype=torch.float64).softmax(0).view(kernel, kernel).float()
    keys = torch.tensor([[[ky, kx] for kx in cols] for ky in rows])
    return weights, keys


def raw_qkv(qkv, heads):
    """[B, H, W, 3C] -> q, k, v [B, heads, H, W, D] (the (3, heads, head_dim) layout), unscaled."""
    B, H, W, C3 = qkv.shape
    parts = qkv.view(B, H, W, 3, heads, C3 // 3 // heads)
    return [parts[:, :, :, i].permute(0, 3, 1, 2, 4) for i in range(3)]


def group_slices(group_heads):
    start = 0
    for n in group_heads:
        yield slice(start, start + n)
        start += n


def run_script(*args):
    spec = importlib.util.spec_from_file_location(
        "attention_maps_script", ROOT / "scripts" / "attention_maps.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main([str(a) for a in args])


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def layer_case():
    """Three groups with uneven heads (1, 2, 2) on a 12 x 10 map, random qkv for two samples."""
    torch.manual_seed(0)
    layers = {
        rpb: HydraNeighborhoodAttention(40, 5, kernels=[3, 5, 3], dilations=[1, 2, 3], use_rpb=rpb).eval()
        for rpb in (True, False)
    }
    qkv = torch.randn(2, 12, 10, 120)
    return layers, qkv


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    return build_generator(TINY).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory, generator):
    path = tmp_path_factory.mktemp("snap") / "network-snapshot-000000.pt"
    save_snapshot(path, generator, {"kimg": 0})
    return path


# ------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("rpb", [True, False], ids=["rpb", "no_rpb"])
def test_weights_are_the_brute_force_softmax_and_rebuild_the_layer_output(layer_case, rpb):
    layers, qkv = layer_case
    attn = layers[rpb]
    assert (attn.rpb is not None) == rpb
    q_raw, k_raw, v_raw = raw_qkv(qkv, 5)
    q, k = am.split_qkv(attn, qkv)
    with torch.no_grad():
        out = attn.attend(qkv).view(2, 12, 10, 5, 8)  # the real op's heads, [B, H, W, heads, D]
    ys, xs = torch.tensor([p[0] for p in QUERIES]), torch.tensor([p[1] for p in QUERIES])
    groups = list(am.head_groups(attn))
    assert [(g, s, kk, d) for g, s, kk, d, _ in groups] == [
        (g, s, kk, d) for g, (s, kk, d) in enumerate(zip(group_slices([1, 2, 2]), [3, 5, 3], [1, 2, 3]))
    ]
    for _, heads, kernel, dilation, table in groups:
        weights, rows, cols = am.window_weights(q[:, heads], k[:, heads], table, kernel, dilation, ys, xs)
        assert weights.shape == (2, heads.stop - heads.start, len(QUERIES), kernel, kernel)
        torch.testing.assert_close(weights.sum((-2, -1)), torch.ones(weights.shape[:3]))
        for n, (y, x) in enumerate(QUERIES):
            for b in range(2):
                expect, keys = brute_weights(q_raw[b, heads], k_raw[b, heads], table, kernel, dilation, y, x)
                torch.testing.assert_close(weights[b, :, n], expect, rtol=1e-5, atol=1e-6)
                key_rows, key_cols = keys[..., 0], keys[..., 1]
                assert (
                    rows[n].tolist() == key_rows[:, 0].tolist() and cols[n].tolist() == key_cols[0].tolist()
                )
                values = v_raw[b, heads][:, key_rows, key_cols]  # [heads, k, k, D]
                rebuilt = (weights[b, :, n, :, :, None] * values).sum((1, 2))
                torch.testing.assert_close(rebuilt, out[b, y, x, heads], rtol=1e-4, atol=1e-5)
    # the border windows really are shifted: (0, 0) in the 3x3 local group, (11, 9) in the dilation-2 group
    _, rows, cols = am.window_weights(q[:, :1], k[:, :1], None, 3, 1, ys[:1], xs[:1])
    assert rows[0].tolist() == [0, 1, 2] and cols[0].tolist() == [0, 1, 2]
    _, rows, cols = am.window_weights(q[:, 1:3], k[:, 1:3], None, 5, 2, ys[1:2], xs[1:2])
    assert rows[0].tolist() == [3, 5, 7, 9, 11] and cols[0].tolist() == [1, 3, 5, 7, 9]


def test_mean_distance_is_the_weighted_distance_over_every_query(layer_case, monkeypatch):
    layers, qkv = layer_case
    attn = layers[True]
    q_raw, k_raw, _ = raw_qkv(qkv, 5)
    q, k = am.split_qkv(attn, qkv)
    monkeypatch.setattr(am, "DISTANCE_CHUNK_ELEMS", 2000)  # several chunks of queries
    for _, heads, kernel, dilation, table in am.head_groups(attn):
        got = am.mean_distance(q[:, heads], k[:, heads], table, kernel, dilation)
        expect = torch.zeros(2, heads.stop - heads.start)
        for y in range(12):
            for x in range(10):
                for b in range(2):
                    w, keys = brute_weights(q_raw[b, heads], k_raw[b, heads], table, kernel, dilation, y, x)
                    dist = ((keys[..., 0] - y).float() ** 2 + (keys[..., 1] - x).float() ** 2).sqrt()
                    expect[b] += (w * dist).sum((1, 2)) / 120
        torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)


def test_proxy_is_the_mean_query_dotted_with_every_key(layer_case):
    layers, qkv = layer_case
    q_raw, k_raw, _ = raw_qkv(qkv, 5)
    got = am.proxy_map(layers[True], qkv)
    mean_q = q_raw.mean((2, 3)) / 8**0.5  # [B, heads, D]
    expect = (mean_q[:, :, None, None, :] * k_raw).sum(-1)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)


def test_generator_maps_match_the_layers_own_qkv(generator):
    queries = [[0, 0], [31, 17], [16, 5], [30, 31]]
    maps = am.attention_maps(generator, [0, 3], queries)
    # captured independently: the qkv of every NA layer, through the module forwards
    captured = {}
    handles = []
    for stage in generator.stages:
        for j, block in enumerate(stage.blocks):
            if isinstance(block.attn, HydraNeighborhoodAttention):
                hook = lambda m, i, o, key=(stage.size, j): captured.setdefault(key, []).append(o)  # noqa: E731
                handles.append(block.attn.qkv.register_forward_hook(hook))
    with torch.no_grad(), generator.using_inference_path("modules"):
        for seed in (0, 3):
            z = torch.from_numpy(np.random.RandomState(seed).randn(1, 16)).float()
            generator(z)
    for h in handles:
        h.remove()
    names = [g.name for g in maps.groups]
    assert names == [
        f"stage{r}_block{b}_group{g}"
        for r, n in ((8, 1), (16, 2), (32, 2))
        for b in range(2)
        for g in range(n)
    ]
    for gm in maps.groups:
        r, attn = (
            gm.stage_resolution,
            generator.stages[int(np.log2(gm.stage_resolution)) - 2].blocks[gm.block].attn,
        )
        heads = slice(gm.heads[0], gm.heads[-1] + 1)
        table = None if attn.rpb is None else attn.rpb[gm.group]
        assert gm.weights.shape == (2, 4, gm.kernel, gm.kernel) and gm.keys.shape == (
            4,
            gm.kernel,
            gm.kernel,
            2,
        )
        np.testing.assert_allclose(gm.weights.sum((-2, -1)), 1.0, rtol=1e-5)
        for s in range(2):
            q_raw, k_raw, _ = raw_qkv(captured[(r, gm.block)][s], attn.num_heads)
            for n, (y, x) in enumerate(queries):
                gy, gx = y * r // 32, x * r // 32
                expect, keys = brute_weights(
                    q_raw[0, heads], k_raw[0, heads], table, gm.kernel, gm.dilation, gy, gx
                )
                np.testing.assert_allclose(gm.weights[s, n], expect.mean(0).numpy(), rtol=1e-4, atol=1e-6)
                assert np.array_equal(gm.keys[n], keys.numpy())
    # the image is the one generate.py draws (the module path agrees with the fused CPU path)
    images = generate_images(generator, [0, 3])
    expect_u8 = ((images.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).numpy()
    assert np.abs(maps.images.astype(float) - expect_u8).max() <= 1
    # nothing stays behind: no hooks, parameters as they were
    assert all(not m._forward_hooks for m in generator.modules())
    assert not any(p.requires_grad for p in generator.parameters())


def test_trainable_generator_keeps_its_flags_and_records_no_graph():
    torch.manual_seed(1)
    G = build_generator(TINY)
    maps = am.attention_maps(G, [1], [[4, 4]], layers=["stage16"])
    assert [g.name for g in maps.groups] == [f"stage16_block{b}_group{g}" for b in range(2) for g in range(2)]
    assert all(p.requires_grad for p in G.parameters()) and all(p.grad is None for p in G.parameters())


def test_script_on_a_demo_like_snapshot(snapshot, tmp_path, capsys):
    out = tmp_path / "maps"
    queries = [[0, 0], [31, 17]]
    assert (
        run_script(
            f"checkpoint={snapshot}", "seeds=[0,2]", "queries=[[0,0],[31,17]]", f"outdir={out}", "proxy=true"
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "distance (image px)" in printed and "32x32" in printed
    meta = json.loads((out / "meta.json").read_text())
    assert set(meta) == {"image_resolution", "queries", "arrays"}
    assert meta["image_resolution"] == 32 and meta["queries"] == queries
    assert meta["arrays"][-1] == {
        "name": "stage32_block1_group1",
        "stage_resolution": 32,
        "block": 1,
        "group": 1,
        "kernel": 5,
        "dilation": 4,
        "heads": [2, 3],
    }
    with np.load(out / "attention.npz") as npz:
        assert set(npz.files) == {
            f"{a['name']}_{kind}" for a in meta["arrays"] for kind in ("weights", "keys")
        }
        for a in meta["arrays"]:
            k, r = a["kernel"], a["stage_resolution"]
            weights, keys = npz[f"{a['name']}_weights"], npz[f"{a['name']}_keys"]
            assert weights.shape == (2, 2, k, k) and keys.shape == (2, k, k, 2)
            np.testing.assert_allclose(weights.sum((-2, -1)), 1.0, rtol=1e-5)
            assert keys.min() >= 0 and keys.max() < r
        # the query (31, 17) maps to floor(p * r / R) and lies inside its local window at every stage
        local = npz["stage16_block0_group0_keys"][1]
        assert [15, 8] in local.reshape(-1, 2).tolist()
    distance = json.loads((out / "attention_distance.json").read_text())
    stages = {(s["stage_resolution"], s["group"]): s for s in distance["stages"]}
    assert set(stages) == {(8, 0), (16, 0), (16, 1), (32, 0), (32, 1)}
    assert stages[(32, 1)]["distance"] > stages[(32, 0)]["distance"]  # the dilated group looks further
    with np.load(out / "proxy.npz") as proxy:
        assert proxy["stage32_block0"].shape == (2, 4, 32, 32) and proxy["stage8_block1"].shape == (
            2,
            2,
            8,
            8,
        )
    for name in (
        "seed0000_stage32_block0.png",
        "seed0002_stage8_block1.png",
        "proxy_seed0002_stage16_block0.png",
    ):
        with Image.open(out / name) as img:
            assert img.format == "PNG" and min(img.size) > 100
    with Image.open(out / "seed0002.png") as img:
        assert img.size == (32, 32)


def test_script_on_a_converted_reference_checkpoint(tmp_path):
    raw = tmp_path / "FFHQ_tiny.pt"
    sd = make_reference_g(REFERENCE_TINY, "legacy", seed=4)
    torch.save({"g": sd, "d": {}, "g_ema": sd}, raw)
    out = tmp_path / "maps"
    assert (
        run_script(
            f"checkpoint={raw}", "queries=[[3,30]]", f"outdir={out}", "layers=[stage16,stage32_block1]"
        )
        == 0
    )
    meta = json.loads((out / "meta.json").read_text())
    got = [(a["name"], a["kernel"], a["dilation"], a["heads"]) for a in meta["arrays"]]
    assert (
        got
        == [  # the reference config: 4 heads; stage 16 kernels [5, 3] dilations [1, 2]; stage 32 [3] [1, 4]
            ("stage16_block0_group0", 5, 1, [0, 1]),
            ("stage16_block0_group1", 3, 2, [2, 3]),
            ("stage16_block1_group0", 5, 1, [0, 1]),
            ("stage16_block1_group1", 3, 2, [2, 3]),
            ("stage32_block1_group0", 3, 1, [0, 1]),
            ("stage32_block1_group1", 3, 4, [2, 3]),
        ]
    )
    with Image.open(out / "seed0000_stage16_block1.png") as img:
        assert img.format == "PNG"
    G = stylenat.load_generator(raw)
    direct = am.attention_maps(G, [0], [[3, 30]], layers="stage32_block1")
    with np.load(out / "attention.npz") as npz:
        np.testing.assert_allclose(npz["stage32_block1_group1_weights"], direct.groups[1].weights, rtol=1e-6)


@pytest.mark.parametrize(
    "queries, message",
    [
        ([[32, 0]], r"queries\[0\]=\[32, 0\]: outside the 32x32 image"),
        ([[0, 0], [-1, 4]], r"queries\[1\]=\[-1, 4\]: outside the 32x32 image"),
        ([[1, 2, 3]], r"queries\[0\]=\[1, 2, 3\]: expected \[y, x\]"),
        ([[1.5, 2]], r"queries\[0\]=\[1.5, 2\]: expected \[y, x\]"),
        ([], r"queries=\[\]: expected a non-empty list"),
    ],
)
def test_a_bad_query_is_one_clear_error(generator, queries, message):
    with pytest.raises(ValueError, match=message):
        am.attention_maps(generator, [0], queries)


@pytest.mark.parametrize("layers", [["stage4"], ["stage16_block2"], [64], "stage16_group0"])
def test_a_bad_layer_is_one_clear_error(generator, layers):
    with pytest.raises(
        ValueError, match=r"is not a neighborhood attention layer .*stage8_block0, stage8_block1"
    ):
        am.attention_maps(generator, [0], [[1, 1]], layers=layers)


def test_script_errors_are_one_line(snapshot, tmp_path, capsys):
    for args, start in (
        (["queries=[[40,3]]"], "error: queries[0]=[40, 3]: outside the 32x32 image"),
        (
            ["queries=[[1,1]]", "layers=[stage4]"],
            "error: layers: 'stage4' is not a neighborhood attention layer",
        ),
        ([], "error: queries is required"),
    ):
        with pytest.raises(SystemExit) as info:
            run_script(f"checkpoint={snapshot}", f"outdir={tmp_path}", *args)
        err = capsys.readouterr().err
        assert info.value.code == 2 and len(err.strip().splitlines()) == 1 and err.startswith(start), err


def test_help_answers_without_torch():
    code = (
        "import runpy, sys\n"
        "sys.argv = ['scripts/attention_maps.py', '--help']\n"
        "try:\n    runpy.run_path('scripts/attention_maps.py', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: python scripts/attention_maps.py checkpoint=<snapshot> queries=")
    assert "configs/attention_maps.yaml" in out.stdout and out.stdout.strip().endswith(
        "torch imported: False"
    )
