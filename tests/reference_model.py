"""The reference (SHI-Labs/StyleNAT) generator, written here from scratch, for the conversion tests.

`make_reference_g` lays out a generator state dict under the reference module names (legacy split-head
`rpb0`/`rpb1` or Hydra `rpb.{i}`), and `RefForward` runs it directly from those raw tensors (qkv as (3, heads,
head_dim), heads group 0 first, a brute-force NA loop with NATTEN's window rule and key - query + (k - 1) RPB
indexing, the 4x4 MHSA bias looked up through the reference's flipped `relative_position_index`). Agreement
with our converted modules is what pins the head order and the RPB orientation (tests/test_convert.py).
"""

import math

import torch
import torch.nn.functional as F

from stylenat import reference
from stylenat.models.build import build_generator

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

# A tiny reference generator: 4 stages (4..32), per-stage kernels/dilations in the reference config
# format; stage 16 has two different kernels (legacy kernel_size_0 != kernel_size_1).
TINY = dict(
    style_dim=32,
    n_mlp=2,
    channels=[64, 64, 32, 32],
    min_heads=4,
    mlp_ratio=4,
    kernels=[[3], [5], [5, 3], [3]],
    dilations=[[1], [1], [1, 2], [1, 4]],
)
PAPER_256 = dict(
    style_dim=512,
    n_mlp=8,
    channels=[512, 512, 512, 512, 512, 256, 128],
    min_heads=4,
    mlp_ratio=4,
    kernels=[[3]] + [[7]] * 6,
    dilations=[[1], [1], [1, 2], [1, 4], [1, 8], [1, 16], [1, 32]],
)


def heads_of(spec):
    return [max(c // 32, spec["min_heads"]) for c in spec["channels"]]


def ref_groups(spec, s, layout):
    """The reference's attention groups at NA stage s: [(heads, kernel, dilation, rpb key suffix)]."""
    h, ks, ds = heads_of(spec)[s], list(spec["kernels"][s]), list(spec["dilations"][s])
    if layout == "legacy" and len(ks) <= 2 and len(ds) <= 2:  # NeighborhoodAttentionSplitHead
        ks, ds = (ks * 2)[:2] if len(ks) == 1 else ks, (ds * 2)[:2] if len(ds) == 1 else ds
        return [(h // 2, ks[0], ds[0], "rpb0"), (h // 2, ks[1], ds[1], "rpb1")]
    n = max(len(ks), len(ds))  # HydraNeighborhoodAttention
    ks, ds = ks * n if len(ks) == 1 else ks, ds * n if len(ds) == 1 else ds
    extra = h - n * (h // n)
    return [(h // n + (i >= n - extra), ks[i], ds[i], f"rpb.{i}") for i in range(n)]


def reference_rp_index(size):
    """Built as the reference MHSARPB does: meshgrid, subtract, shift, multiply, sum, flipud(fliplr)."""
    coords = torch.stack(torch.meshgrid([torch.arange(size), torch.arange(size)], indexing="ij"))
    flat = torch.flatten(coords, 1)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += size - 1
    rel[:, :, 1] += size - 1
    rel[:, :, 0] *= 2 * size - 1
    return torch.flipud(torch.fliplr(rel.sum(-1)))


def blur_kernel():
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = k[None, :] * k[:, None]
    return k / k.sum() * 4


def make_reference_g(spec, layout="legacy", seed=0):
    """A reference-layout generator state dict with random values (all tensors matter numerically)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=1.0, mean=0.0):
        return torch.randn(*shape, generator=g) * std + mean

    sd = {}
    d = spec["style_dim"]
    for i in range(1, spec["n_mlp"] + 1):
        sd[f"style.{i}.weight"] = rnd(d, d, std=100.0)  # EqualLinear stores weight / lr_mul
        sd[f"style.{i}.bias"] = rnd(d, std=10.0)
    ch, heads, n = spec["channels"], heads_of(spec), len(spec["channels"])
    sd["input.input"] = rnd(1, ch[0], 4, 4)
    for s in range(n):
        c, size = ch[s], 4 * 2**s
        for j in range(2):
            p = f"layers.{s}.blocks.{j}."
            for norm in ("norm1", "norm2"):
                sd[f"{p}{norm}.style.weight"] = rnd(2 * c, d, std=0.3)
                sd[f"{p}{norm}.style.bias"] = torch.cat([rnd(c, std=0.1, mean=1.0), rnd(c, std=0.1)])
            sd[f"{p}attn.qkv.weight"] = rnd(3 * c, c, std=c**-0.5)
            sd[f"{p}attn.qkv.bias"] = rnd(3 * c, std=0.1)
            if s == 0:
                sd[f"{p}attn.rpb"] = rnd(heads[0], 2 * size - 1, 2 * size - 1)
                sd[f"{p}attn.relative_position_index"] = reference_rp_index(size)
            else:
                for h, k, _, name in ref_groups(spec, s, layout):
                    sd[f"{p}attn.{name}"] = rnd(h, 2 * k - 1, 2 * k - 1)
            sd[f"{p}attn.proj.weight"] = rnd(c, c, std=c**-0.5)
            sd[f"{p}attn.proj.bias"] = rnd(c, std=0.1)
            hidden = int(c * spec["mlp_ratio"])
            sd[f"{p}mlp.fc1.weight"] = rnd(hidden, c, std=c**-0.5)
            sd[f"{p}mlp.fc1.bias"] = rnd(hidden, std=0.1)
            sd[f"{p}mlp.fc2.weight"] = rnd(c, hidden, std=hidden**-0.5)
            sd[f"{p}mlp.fc2.bias"] = rnd(c, std=0.1)
        if s < n - 1:
            p = f"layers.{s}.upsample."
            sd[f"{p}norm.weight"] = rnd(c, std=0.1, mean=1.0)
            sd[f"{p}norm.bias"] = rnd(c, std=0.1)
            sd[f"{p}reduction.weight"] = rnd(ch[s + 1], c, std=c**-0.5)
            sd[f"{p}alpha"] = rnd(1, std=0.3, mean=0.5)
            sd[f"{p}sin_pos_embed._float_tensor"] = torch.zeros(1)
        c_rgb = ch[s + 1] if s < n - 1 else c
        sd[f"to_rgbs.{s}.conv.weight"] = rnd(3, c_rgb, 1, 1, std=c_rgb**-0.5)
        sd[f"to_rgbs.{s}.conv.bias"] = rnd(3, std=0.1)
        sd[f"to_rgbs.{s}.bias"] = rnd(1, 3, 1, 1, std=0.1)
        if s < n - 1:
            sd[f"to_rgbs.{s}.upsample.kernel"] = blur_kernel()
    return sd


# ------------------------------------------------------------------------------ independent forward
def axis_window(i, length, k, d):
    """NATTEN's window along one axis: key positions and RPB indices (key - query in group units + k - 1)."""
    group, j = i % d, i // d
    group_len = len(range(group, length, d))
    start = min(max(j - k // 2, 0), group_len - k)
    return [group + d * (start + m) for m in range(k)], [start + m - j + k - 1 for m in range(k)]


def brute_na(q, k, v, rpb, kernel, dilation):
    """q (already scaled), k, v [B, heads, H, W, D]; rpb [heads, 2k-1, 2k-1]."""
    B, h, H, W, D = q.shape
    out = torch.empty_like(q)
    for y in range(H):
        ky, ry = axis_window(y, H, kernel, dilation)
        for x in range(W):
            kx, rx = axis_window(x, W, kernel, dilation)
            keys = k[:, :, ky][:, :, :, kx].reshape(B, h, -1, D)
            vals = v[:, :, ky][:, :, :, kx].reshape(B, h, -1, D)
            bias = rpb[:, ry][:, :, rx].reshape(h, -1)
            attn = (torch.einsum("bhd,bhnd->bhn", q[:, :, y, x], keys) + bias).softmax(-1)
            out[:, :, y, x] = torch.einsum("bhn,bhnd->bhd", attn, vals)
    return out


def up_fir(x, kernel):
    """Zero-insertion x2, pad (2, 1), true convolution with the 4x4 kernel (per channel)."""
    B, C, H, W = x.shape
    up = x.new_zeros(B, C, 2 * H, 2 * W)
    up[:, :, ::2, ::2] = x
    up = F.pad(up, (2, 1, 2, 1))
    w = kernel.flip(0, 1)[None, None].repeat(C, 1, 1, 1)
    return F.conv2d(up, w, groups=C)


def spe_grid(h, w, channels):
    """fairseq sinusoidal table (positions 1..n, freq 10000^(-i/(half-1))); first half x, second half y."""
    dim = channels // 2
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000) / (half - 1)))

    def emb(n):
        ang = torch.arange(1, n + 1, dtype=torch.float32)[:, None] * freq[None]
        return torch.cat([torch.sin(ang), torch.cos(ang)], 1)

    return torch.cat([emb(w)[None, :, :].expand(h, w, dim), emb(h)[:, None, :].expand(h, w, dim)], -1)


class RefForward:
    def __init__(self, sd, spec, layout):
        self.sd, self.spec, self.layout = sd, spec, layout
        self.heads = heads_of(spec)

    def mapping(self, z):
        x = z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8)
        for i in range(1, self.spec["n_mlp"] + 1):
            W, b = self.sd[f"style.{i}.weight"], self.sd[f"style.{i}.bias"]
            x = F.linear(x, W * (0.01 / math.sqrt(W.shape[1])))
            x = F.leaky_relu(x + b * 0.01, 0.2) * math.sqrt(2)
        return x

    def adain(self, p, x, w):
        W, b = self.sd[p + "style.weight"], self.sd[p + "style.bias"]
        gamma, beta = F.linear(w, W / math.sqrt(W.shape[1]), b).chunk(2, 1)
        B, H, Wd, C = x.shape
        xn = F.instance_norm(x.reshape(B, H * Wd, C).transpose(1, 2)).transpose(1, 2).reshape(B, H, Wd, C)
        return gamma[:, None, None] * xn + beta[:, None, None]

    def mhsa(self, p, x, heads):
        B, H, W, C = x.shape
        N, hd = H * W, C // heads
        qkv = F.linear(x, self.sd[p + "qkv.weight"], self.sd[p + "qkv.bias"])
        qkv = qkv.reshape(B, N, 3, heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * hd**-0.5, qkv[1], qkv[2]
        idx = self.sd[p + "relative_position_index"]
        table = self.sd[p + "rpb"].permute(1, 2, 0).flatten(0, 1)
        bias = table[idx.reshape(-1)].reshape(N, N, heads).permute(2, 0, 1)
        attn = (q @ k.transpose(-2, -1) + bias[None]).softmax(-1)
        out = (attn @ v).transpose(1, 2).reshape(B, H, W, C)
        return F.linear(out, self.sd[p + "proj.weight"], self.sd[p + "proj.bias"])

    def na(self, p, x, s):
        B, H, W, C = x.shape
        heads = self.heads[s]
        hd = C // heads
        qkv = F.linear(x, self.sd[p + "qkv.weight"], self.sd[p + "qkv.bias"])
        qkv = qkv.reshape(B, H, W, 3, heads, hd).permute(3, 0, 4, 1, 2, 5)
        q, k, v = qkv[0] * hd**-0.5, qkv[1], qkv[2]
        outs, start = [], 0
        for h, kernel, dil, name in ref_groups(self.spec, s, self.layout):
            sl = slice(start, start + h)
            outs.append(brute_na(q[:, sl], k[:, sl], v[:, sl], self.sd[p + name], kernel, dil))
            start += h
        out = torch.cat(outs, 1).permute(0, 2, 3, 1, 4).reshape(B, H, W, C)
        return F.linear(out, self.sd[p + "proj.weight"], self.sd[p + "proj.bias"])

    def block(self, s, j, x, w):
        p = f"layers.{s}.blocks.{j}."
        h = self.adain(p + "norm1.", x, w)
        x = x + (self.mhsa(p + "attn.", h, self.heads[0]) if s == 0 else self.na(p + "attn.", h, s))
        h = self.adain(p + "norm2.", x, w)
        h = F.gelu(F.linear(h, self.sd[p + "mlp.fc1.weight"], self.sd[p + "mlp.fc1.bias"]))
        return x + F.linear(h, self.sd[p + "mlp.fc2.weight"], self.sd[p + "mlp.fc2.bias"])

    def upsample(self, s, x):
        p = f"layers.{s}.upsample."
        B, H, W, C = x.shape
        y = F.interpolate(x.permute(0, 3, 1, 2), scale_factor=2, mode="bilinear", align_corners=False)
        y = F.layer_norm(y.permute(0, 2, 3, 1), (C,), self.sd[p + "norm.weight"], self.sd[p + "norm.bias"])
        y = F.linear(y, self.sd[p + "reduction.weight"])
        return y + self.sd[p + "alpha"] * spe_grid(2 * H, 2 * W, y.shape[-1])

    def to_rgb(self, s, x, skip):
        p = f"to_rgbs.{s}."
        out = (
            F.conv2d(x.permute(0, 3, 1, 2), self.sd[p + "conv.weight"], self.sd[p + "conv.bias"])
            + self.sd[p + "bias"]
        )
        if skip is not None:
            if p + "upsample.kernel" in self.sd:
                skip = up_fir(skip, self.sd[p + "upsample.kernel"])
            out = out + skip
        return out

    def __call__(self, z):
        """-> the reference generator's image (ImageNet-normalised pixels), NCHW."""
        w = self.mapping(z)
        x = self.sd["input.input"].repeat(z.shape[0], 1, 1, 1).permute(0, 2, 3, 1)
        skip = None
        for s in range(len(self.spec["channels"])):
            x = self.block(s, 1, self.block(s, 0, x, w), w)
            if s < len(self.spec["channels"]) - 1:
                x = self.upsample(s, x)
            skip = self.to_rgb(s, x, skip)
        return skip


def to_minus_one_one(img):
    return (img * IMAGENET_STD + IMAGENET_MEAN) * 2 - 1


def converted(sd, layout="legacy", **kw):
    snap = reference.reference_to_snapshot(
        reference.reference_checkpoint(sd, layout), w_avg_samples=kw.pop("n", 64), **kw
    )
    G = build_generator(snap["model_config"])
    G.load_state_dict(snap["state_dict"])
    return snap, G.eval()


def small_reference_d(resolution=32, seed=0):
    """A reference-layout wavelet D (spectral norm: weight_orig/_u/_v); ours mirrors its module names."""
    from stylenat.models.build import build_discriminator

    torch.manual_seed(seed)
    D = build_discriminator(
        {"name": "wavelet", "channel_multiplier": 2, "sn": True, "channel_max": 32}, resolution
    )
    return {k: v.clone() for k, v in D.state_dict().items()}
