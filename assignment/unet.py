"""Time-conditioned U-Net eps_theta(x_t, i) that predicts the noise in x_t.

Layout (after the DDPM U-Net of Ho et al. and lucidrains' port): a stem conv, then one level per
entry of `dim_mults`; each level has two residual blocks (GroupNorm, SiLU, time conditioning)
and halves H and W, except the last. The middle (lowest resolution) has full self-attention.
The decoder mirrors the encoder with skip connections.

Time convention: the model receives the code index i in 0..T-1 (paper step t = i + 1).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def _groups(channels, max_groups=8):
    """Largest number of GroupNorm groups <= max_groups that divides `channels`."""
    return math.gcd(channels, max_groups)


class SinusoidalTimeEmbedding(nn.Module):
    """Transformer-style sinusoidal embedding of integer time indices.

    Args:
        dim: embedding size (even).
    forward:
        t: (B,) int64 time indices.  Returns (B, dim) float: [sin(t w_k), cos(t w_k)],
        with frequencies w_k = 10000^(-k / (dim/2 - 1)).
    """

    def __init__(self, dim):
        super().__init__()
        if dim % 2 or dim < 4:
            raise ValueError(f"time embedding size must be even and >= 4, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / (half - 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t):
        args = t.float()[:, None] * self.freqs[None, :]
        return torch.cat([args.sin(), args.cos()], dim=-1)


class ResidualBlock(nn.Module):
    """Two 3x3 convs with GroupNorm + SiLU; the time embedding scales and shifts the first.

    x: (B, dim_in, H, W), time_emb: (B, time_dim)  ->  (B, dim_out, H, W).
    """

    def __init__(self, dim_in, dim_out, time_dim):
        super().__init__()
        self.time_mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, 2 * dim_out))
        self.conv1 = nn.Conv2d(dim_in, dim_out, 3, padding=1)
        self.norm1 = nn.GroupNorm(_groups(dim_out), dim_out)
        self.conv2 = nn.Conv2d(dim_out, dim_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(dim_out), dim_out)
        self.skip = nn.Conv2d(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x, time_emb):
        scale, shift = self.time_mlp(time_emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm1(self.conv1(x))
        h = F.silu(h * (scale + 1) + shift)
        h = F.silu(self.norm2(self.conv2(h)))
        return h + self.skip(x)


class Attention(nn.Module):
    """Full multi-head self-attention over the H*W positions, with a residual connection.

    Quadratic in H*W, so the U-Net uses it only at the lowest resolution.
    x: (B, dim, H, W) -> (B, dim, H, W).
    """

    def __init__(self, dim, heads=4, dim_head=32):
        super().__init__()
        self.heads = heads
        hidden = heads * dim_head
        self.norm = nn.GroupNorm(1, dim)
        self.to_qkv = nn.Conv2d(dim, 3 * hidden, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x):
        b, _, h, w = x.shape
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=1)
        # (B, heads*d, H, W) -> (B, heads, H*W, d)
        q, k, v = (z.reshape(b, self.heads, -1, h * w).transpose(-1, -2) for z in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, -1, h, w)
        return x + self.to_out(out)


def _downsample(dim_in, dim_out):
    """Halve H and W: (B, dim_in, H, W) -> (B, dim_out, H/2, W/2)."""
    return nn.Conv2d(dim_in, dim_out, 4, stride=2, padding=1)


def _upsample(dim_in, dim_out):
    """Double H and W: nearest neighbour, then a 3x3 conv."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                         nn.Conv2d(dim_in, dim_out, 3, padding=1))


class Unet(nn.Module):
    """Noise-prediction U-Net.

    Args:
        dim: base width; level k has dim * dim_mults[k] channels.
        dim_mults: width multipliers, one per resolution level. With L levels the image is
            halved L - 1 times, so H and W must be divisible by 2 ** (L - 1).
        channels: C of the images (1 for grayscale, 3 for RGB).
    forward(x, t):
        x: (B, C, H, W) noisy images x_t (in [-1, 1] scale).
        t: (B,) int64 time indices in [0, T-1].
        Returns (B, C, H, W): the predicted noise eps_theta(x_t, t).
    """

    def __init__(self, dim, dim_mults=(1, 2, 4, 8), channels=3):
        super().__init__()
        dim, channels = int(dim), int(channels)
        dim_mults = tuple(int(m) for m in dim_mults)
        if dim < 2 or dim % 2:
            raise ValueError(f"Unet dim must be an even integer >= 2, got {dim}")
        if not dim_mults or min(dim_mults) < 1:
            raise ValueError(f"Unet dim_mults must be positive integers, got {dim_mults}")
        if channels < 1:
            raise ValueError(f"Unet channels must be >= 1, got {channels}")
        self.channels = channels
        self.dim_mults = dim_mults
        self.downsample_factor = 2 ** (len(dim_mults) - 1)

        time_dim = 4 * dim
        self.time_mlp = nn.Sequential(
            SinusoidalTimeEmbedding(max(dim, 4)),
            nn.Linear(max(dim, 4), time_dim),
            nn.GELU(),
            nn.Linear(time_dim, time_dim),
        )

        self.init_conv = nn.Conv2d(channels, dim, 7, padding=3)
        widths = [dim] + [dim * m for m in dim_mults]
        pairs = list(zip(widths[:-1], widths[1:], strict=True))
        last = len(pairs) - 1

        self.downs = nn.ModuleList()
        for k, (w_in, w_out) in enumerate(pairs):
            self.downs.append(nn.ModuleList([
                ResidualBlock(w_in, w_in, time_dim),
                ResidualBlock(w_in, w_in, time_dim),
                _downsample(w_in, w_out) if k < last else nn.Conv2d(w_in, w_out, 3, padding=1),
            ]))

        mid = widths[-1]
        self.mid_block1 = ResidualBlock(mid, mid, time_dim)
        self.mid_attn = Attention(mid)
        self.mid_block2 = ResidualBlock(mid, mid, time_dim)

        self.ups = nn.ModuleList()
        for k, (w_in, w_out) in enumerate(reversed(pairs)):
            self.ups.append(nn.ModuleList([
                ResidualBlock(w_out + w_in, w_out, time_dim),
                ResidualBlock(w_out + w_in, w_out, time_dim),
                _upsample(w_out, w_in) if k < last else nn.Conv2d(w_out, w_in, 3, padding=1),
            ]))

        self.final_block = ResidualBlock(2 * dim, dim, time_dim)
        self.final_conv = nn.Conv2d(dim, channels, 1)

    def _check_inputs(self, x, t):
        if x.dim() != 4:
            raise ValueError(f"Unet expects x of shape (B, C, H, W); got {tuple(x.shape)}")
        b, c, h, w = x.shape
        if c != self.channels:
            raise ValueError(f"Unet was built for {self.channels} channel(s) but x has {c} "
                             f"(shape {tuple(x.shape)}); build it with channels={c}.")
        f = self.downsample_factor
        if h % f or w % f:
            raise ValueError(
                f"Unet with dim_mults={self.dim_mults} halves the image {len(self.dim_mults) - 1} "
                f"times, so H and W must be divisible by {f}; got H={h}, W={w}.")
        if t.dim() != 1 or t.shape[0] != b:
            raise ValueError(f"Unet expects t of shape ({b},) (one time index per image); "
                             f"got {tuple(t.shape)}")
        if t.is_floating_point():
            raise ValueError("Unet expects integer time indices t (torch.long), got floats")

    def forward(self, x, t):
        self._check_inputs(x, t)
        emb = self.time_mlp(t)
        x = self.init_conv(x)
        skips = [x]
        for block1, block2, down in self.downs:
            x = block1(x, emb)
            skips.append(x)
            x = block2(x, emb)
            skips.append(x)
            x = down(x)

        x = self.mid_block1(x, emb)
        x = self.mid_attn(x)
        x = self.mid_block2(x, emb)

        for block1, block2, up in self.ups:
            x = block1(torch.cat([x, skips.pop()], dim=1), emb)
            x = block2(torch.cat([x, skips.pop()], dim=1), emb)
            x = up(x)

        x = self.final_block(torch.cat([x, skips.pop()], dim=1), emb)
        return self.final_conv(x)
