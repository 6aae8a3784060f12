"""AST (Rudolph et al., WACV 2023) reference maths for ast-edge parity fixtures.

Written for this project from the model's formulas (see docs in README.md next to this file).
It is a test oracle only: nothing in the product imports or ships it.

Conventions
-----------
* Tensors are NCHW. Every function works in float32 or float64 (the fixtures are computed in float64
  from float32-stored inputs and weights, then stored as float32).
* Parameter names of the teacher's couplings and of the student follow the key layout of the authors'
  PyTorch checkpoints, so a state_dict saved there maps 1:1 (see `teacher_key_prefix`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------
# Hyper-parameters
# ----------------------------------------------------------------------------------------------


@dataclass
class TeacherConfig:
    channels: int                      # C: flow channels (features, or features + unshuffled depth)
    cond_channels: int = 32            # positional-encoding channels appended to every subnet input
    hidden: int = 64                   # hidden channels of each coupling subnet
    kernel_sizes: Sequence[int] = (3, 3, 3, 5)   # one per coupling block
    clamp: float = 1.9                 # soft clamp parameter
    clamp_slope: float = 0.636         # the constant in clamp * 0.636 * atan(a / clamp)

    @property
    def n_blocks(self) -> int:
        return len(self.kernel_sizes)


@dataclass
class StudentConfig:
    in_channels: int                   # C (features) — the student sees [P, F] so conv1 gets C + pos
    out_channels: int                  # what it predicts (= teacher channels)
    pos_channels: int = 32
    width: int = 1024
    n_res_blocks: int = 4
    leaky_slope: float = 0.01
    bn_eps: float = 1e-5


# ----------------------------------------------------------------------------------------------
# Positional encoding
# ----------------------------------------------------------------------------------------------


def positional_encoding(dim: int, height: int, width: int, dtype=torch.float64) -> torch.Tensor:
    """2-D sin/cos encoding, shape [dim, height, width].

    The first dim/2 channels encode the column (x / width) coordinate, the second dim/2 the row
    (y / height) coordinate. Within each half, channel 2j is sin(pos * f_j) and 2j+1 is cos(pos * f_j),
    with f_j = exp(-(2j) * ln(10000) / (dim/2)).
    """
    if dim % 4 != 0:
        raise ValueError(f"positional encoding needs dim % 4 == 0, got {dim}")
    half = dim // 2
    k = torch.arange(0, half, 2, dtype=dtype)                      # 0, 2, 4, ...
    freq = torch.exp(-k * (math.log(10000.0) / half))              # [half/2]
    xs = torch.arange(width, dtype=dtype)[:, None] * freq[None]    # [W, half/2]
    ys = torch.arange(height, dtype=dtype)[:, None] * freq[None]   # [H, half/2]
    pe = torch.zeros(dim, height, width, dtype=dtype)
    pe[0:half:2] = torch.sin(xs).T[:, None, :].expand(-1, height, -1)
    pe[1:half:2] = torch.cos(xs).T[:, None, :].expand(-1, height, -1)
    pe[half::2] = torch.sin(ys).T[:, :, None].expand(-1, -1, width)
    pe[half + 1::2] = torch.cos(ys).T[:, :, None].expand(-1, -1, width)
    return pe


# ----------------------------------------------------------------------------------------------
# Teacher: conditional affine-coupling normalizing flow
# ----------------------------------------------------------------------------------------------


def block_permutation(seed: int, channels: int) -> np.ndarray:
    """The fixed channel permutation of coupling block `seed` (NumPy's legacy global RNG)."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        perm = np.random.permutation(channels)
    finally:
        np.random.set_state(state)
    return perm.astype(np.int64)


def soft_clamp(a: torch.Tensor, clamp: float, slope: float = 0.636) -> torch.Tensor:
    """Log-scale soft clamp: clamp * slope * atan(a / clamp) (bounded by ~±clamp)."""
    return clamp * slope * torch.atan(a / clamp)


class Subnet(nn.Module):
    """conv k×k (replicate padding) → ReLU → conv k×k (replicate padding) → × gamma."""

    def __init__(self, c_in: int, c_out: int, hidden: int, kernel: int):
        super().__init__()
        self.kernel = kernel
        self.conv1 = nn.Conv2d(c_in, hidden, kernel, padding=0, bias=True)
        self.conv2 = nn.Conv2d(hidden, c_out, kernel, padding=0, bias=True)
        self.gamma = nn.Parameter(torch.zeros(1))

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        p = self.kernel // 2
        return F.pad(x, (p, p, p, p), mode="replicate") if p > 0 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(self._pad(x)))
        return self.conv2(self._pad(h)) * self.gamma


class Coupling(nn.Module):
    """Two-sided conditional affine coupling (GLOW style) with soft-clamped log-scales.

    x = [x1 (first C//2 channels), x2 (the rest)]
      r2 = s2([x2, cond]);  a2, t2 = first/second half of r2;  y1 = exp(e(a2)) * x1 + t2
      r1 = s1([y1, cond]);  a1, t1 = first/second half of r1;  y2 = exp(e(a1)) * x2 + t1
    y = [y1, y2] (clipped to ±1e6);  log|det J| per pixel = Σ_c e(a1) + Σ_c e(a2)
    """

    def __init__(self, channels: int, cond: int, hidden: int, kernel: int, clamp: float, slope: float):
        super().__init__()
        self.n1 = channels // 2
        self.n2 = channels - channels // 2
        self.clamp = clamp
        self.slope = slope
        self.s1 = Subnet(self.n1 + cond, 2 * self.n2, hidden, kernel)
        self.s2 = Subnet(self.n2 + cond, 2 * self.n1, hidden, kernel)

    def _e(self, a):
        return soft_clamp(a, self.clamp, self.slope)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x1, x2 = x[:, : self.n1], x[:, self.n1:]
        r2 = self.s2(torch.cat([x2, cond], 1))
        a2, t2 = r2[:, : self.n1], r2[:, self.n1:]
        y1 = torch.exp(self._e(a2)) * x1 + t2
        r1 = self.s1(torch.cat([y1, cond], 1))
        a1, t1 = r1[:, : self.n2], r1[:, self.n2:]
        y2 = torch.exp(self._e(a1)) * x2 + t1
        y = torch.clamp(torch.cat([y1, y2], 1), -1e6, 1e6)
        logdet = self._e(a1).sum(1) + self._e(a2).sum(1)
        return y, logdet

    def inverse(self, y: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        y1, y2 = y[:, : self.n1], y[:, self.n1:]
        r1 = self.s1(torch.cat([y1, cond], 1))
        a1, t1 = r1[:, : self.n2], r1[:, self.n2:]
        x2 = (y2 - t1) * torch.exp(-self._e(a1))
        r2 = self.s2(torch.cat([x2, cond], 1))
        a2, t2 = r2[:, : self.n1], r2[:, self.n1:]
        x1 = (y1 - t2) * torch.exp(-self._e(a2))
        return torch.cat([x1, x2], 1)


def teacher_key_prefix(block: int, with_pos_enc: bool = True) -> str:
    """Checkpoint key prefix of coupling block `block` in the authors' graph-net layout.

    Their node list is [cond input, feature input, (permute_k, coupling_k) for k in blocks, output]
    (without positional encoding the cond input is absent), so coupling k sits at 2k + 3 (2k + 2).
    """
    return f"module_list.{2 * block + (3 if with_pos_enc else 2)}"


class TeacherFlow(nn.Module):
    """Stack of (fixed permutation → conditional coupling) blocks; returns z and per-pixel log-det."""

    def __init__(self, cfg: TeacherConfig):
        super().__init__()
        self.cfg = cfg
        self.couplings = nn.ModuleList(
            Coupling(cfg.channels, cfg.cond_channels, cfg.hidden, k, cfg.clamp, cfg.clamp_slope)
            for k in cfg.kernel_sizes
        )
        perms = [torch.from_numpy(block_permutation(i, cfg.channels)) for i in range(cfg.n_blocks)]
        for i, p in enumerate(perms):
            self.register_buffer(f"perm_{i}", p)

    def perm(self, i: int) -> torch.Tensor:
        return getattr(self, f"perm_{i}")

    def forward(self, x: torch.Tensor, cond: torch.Tensor, return_blocks: bool = False):
        """x [N, C, h, w]; cond [N, P, h, w] (the positional encoding tiled over the batch)."""
        logdet = torch.zeros(x.shape[0], x.shape[2], x.shape[3], dtype=x.dtype)
        blocks_z, blocks_ld = [], []
        for i, cp in enumerate(self.couplings):
            x = x[:, self.perm(i)]                 # output channel j = input channel perm[j]
            x, ld = cp(x, cond)
            logdet = logdet + ld
            blocks_z.append(x)
            blocks_ld.append(ld)
        if return_blocks:
            return x, logdet, blocks_z, blocks_ld
        return x, logdet

    def inverse(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = z
        for i in reversed(range(len(self.couplings))):
            x = self.couplings[i].inverse(x, cond)
            inv = torch.argsort(self.perm(i))
            x = x[:, inv]
        return x

    # --- checkpoint layout ------------------------------------------------------------------

    def reference_state_dict(self) -> dict:
        """Tensors under the authors' key names, plus `perm.{i}` (int64) for the permutations."""
        out = {}
        for i, cp in enumerate(self.couplings):
            pre = teacher_key_prefix(i)
            for side in ("s1", "s2"):
                sub = getattr(cp, side)
                out[f"{pre}.{side}.gamma"] = sub.gamma.detach()
                out[f"{pre}.{side}.conv1.weight"] = sub.conv1.weight.detach()
                out[f"{pre}.{side}.conv1.bias"] = sub.conv1.bias.detach()
                out[f"{pre}.{side}.conv2.weight"] = sub.conv2.weight.detach()
                out[f"{pre}.{side}.conv2.bias"] = sub.conv2.bias.detach()
            out[f"perm.{i}"] = self.perm(i).clone()
        return out

    def load_reference_state_dict(self, sd: dict) -> None:
        with torch.no_grad():
            for i, cp in enumerate(self.couplings):
                pre = teacher_key_prefix(i)
                for side in ("s1", "s2"):
                    sub = getattr(cp, side)
                    sub.gamma.copy_(sd[f"{pre}.{side}.gamma"])
                    sub.conv1.weight.copy_(sd[f"{pre}.{side}.conv1.weight"])
                    sub.conv1.bias.copy_(sd[f"{pre}.{side}.conv1.bias"])
                    sub.conv2.weight.copy_(sd[f"{pre}.{side}.conv2.weight"])
                    sub.conv2.bias.copy_(sd[f"{pre}.{side}.conv2.bias"])
                if f"perm.{i}" in sd:
                    getattr(self, f"perm_{i}").copy_(sd[f"perm.{i}"])


# ----------------------------------------------------------------------------------------------
# Student: plain conv net with residual blocks
# ----------------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    """x + act(bn2(l2(act(bn1(l1(x)))))) — the activation comes before the skip sum."""

    def __init__(self, width: int, slope: float, eps: float):
        super().__init__()
        self.l1 = nn.Conv2d(width, width, 3, padding=1)
        self.l2 = nn.Conv2d(width, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width, eps=eps)
        self.bn2 = nn.BatchNorm2d(width, eps=eps)
        self.slope = slope

    def forward(self, x):
        h = F.leaky_relu(self.bn1(self.l1(x)), self.slope)
        h = F.leaky_relu(self.bn2(self.l2(h)), self.slope)
        return x + h


class Student(nn.Module):
    """conv3×3 → LeakyReLU → residual blocks → conv3×3 (zero padding everywhere).

    Attribute names give the checkpoint keys: conv1.*, conv2.*, res.{i}.{l1,l2,bn1,bn2}.*, and an
    unused scalar `gamma` that the authors' checkpoints also carry.
    """

    def __init__(self, cfg: StudentConfig):
        super().__init__()
        self.cfg = cfg
        self.conv1 = nn.Conv2d(cfg.in_channels + cfg.pos_channels, cfg.width, 3, padding=1)
        self.conv2 = nn.Conv2d(cfg.width, cfg.out_channels, 3, padding=1)
        self.res = nn.ModuleList(ResBlock(cfg.width, cfg.leaky_slope, cfg.bn_eps)
                                 for _ in range(cfg.n_res_blocks))
        self.gamma = nn.Parameter(torch.zeros(1))   # present in checkpoints, never used

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = torch.cat([cond, x], 1)                 # positional encoding FIRST
        h = F.leaky_relu(self.conv1(h), self.cfg.leaky_slope)
        for blk in self.res:
            h = blk(h)
        return self.conv2(h)


# ----------------------------------------------------------------------------------------------
# Anomaly map and scores
# ----------------------------------------------------------------------------------------------


def distance_map(z_teacher: torch.Tensor, z_student: torch.Tensor) -> torch.Tensor:
    """Per-pixel mean over channels of the squared difference: [N, h, w]."""
    return ((z_teacher - z_student) ** 2).mean(1)


def image_scores(amap: torch.Tensor) -> List[dict]:
    """Max and mean of each map [N, h, w] (at whatever resolution it is given)."""
    flat = amap.reshape(amap.shape[0], -1)
    return [{"max": float(m), "mean": float(a)} for m, a in zip(flat.max(1).values, flat.mean(1))]


def upsample_map(amap: torch.Tensor, factor: int) -> torch.Tensor:
    """Bicubic (a = -0.75, half-pixel centres, edge-clamped taps) upsampling by an integer factor."""
    return F.interpolate(amap[:, None], scale_factor=factor, mode="bicubic", align_corners=False)[:, 0]


def teacher_nll(z: torch.Tensor, logdet: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-pixel NLL 0.5·Σ_c m·z² − m·logdet; mask m [N, h, w] (1 when None). Loss = its mean."""
    m = torch.ones_like(logdet) if mask is None else mask
    return 0.5 * (m[:, None] * z ** 2).sum(1) - logdet * m


# ----------------------------------------------------------------------------------------------
# Depth / RGB-D preprocessing (MVTec 3D-AD style)
# ----------------------------------------------------------------------------------------------


def fill_gaps_once(z: np.ndarray, border_quirk: bool = True) -> np.ndarray:
    """One pass of gap filling: each zero pixel takes the mean of the positive values in its 3×3
    neighbourhood (read from the input of the pass, written to a copy); stays 0 if none is positive.

    border_quirk=True reproduces the authors' window: for row 0 or column 0 the window start index is
    -1, which Python slicing turns into an EMPTY window, so zeros on the first row/column are never
    filled. On the last row/column the window is simply truncated.
    """
    out = z.copy()
    H, W = z.shape
    for y, x in zip(*np.nonzero(z == 0)):
        if border_quirk and (y == 0 or x == 0):
            continue
        win = z[max(y - 1, 0): y + 2, max(x - 1, 0): x + 2]
        n = np.count_nonzero(win > 0)
        if n > 0:
            out[y, x] = win.sum() / n
    return out


def fill_gaps(z: np.ndarray, passes: int = 3, border_quirk: bool = True) -> np.ndarray:
    for _ in range(passes):
        z = fill_gaps_once(z, border_quirk)
    return z


def corner_means(z: np.ndarray) -> Tuple[float, float, float, float]:
    """Means of the positive values of the four 2×2 corner blocks:
    (top-left, bottom-left, top-right, bottom-right) in (row, column) image terms."""
    def m(block):
        return float(block.sum() / np.count_nonzero(block > 0))
    return m(z[:2, :2]), m(z[-2:, :2]), m(z[:2, -2:]), m(z[-2:, -2:])


def background_surface(z: np.ndarray) -> np.ndarray:
    """Bilinear surface through the four corner means, placed at the four corner pixels:
    linear in the row between top and bottom, then linear in the column between left and right."""
    H, W = z.shape
    tl, bl, tr, br = corner_means(z)
    left = np.linspace(tl, bl, H)          # column 0, rows 0..H-1
    right = np.linspace(tr, br, H)         # column W-1
    u = np.linspace(0.0, 1.0, W)[None]     # 0 at column 0, 1 at column W-1
    return left[:, None] * (1.0 - u) + right[:, None] * u


def foreground_mask(z_filled: np.ndarray, thresh: float = 7e-3) -> np.ndarray:
    """1 where |z - background| > thresh and z != 0, else 0 (float)."""
    bg = background_surface(z_filled)
    fg = (np.abs(bg - z_filled) > thresh).astype(z_filled.dtype)
    fg[z_filled == 0] = 0
    return fg


def normalize_depth(z_filled: np.ndarray, fg: np.ndarray, scale: float = 100.0) -> np.ndarray:
    """Background set to the foreground mean, then (z - mean_fg) * 100 (so background becomes 0)."""
    mean_fg = (fg * z_filled).sum() / fg.sum()
    z = fg * z_filled + (1 - fg) * mean_fg
    return (z - mean_fg) * scale


def resize_bilinear(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear, half-pixel centres (align_corners=False), no antialiasing; x [N, C, H, W]."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def dilate(mask: np.ndarray, size: int = 8) -> np.ndarray:
    """Binary dilation with a size×size square of ones, zero outside the image.

    output[y, x] = max of input[y + dy, x + dx] for dy, dx in [-((size-1)//2), size//2]:
    centred for odd sizes; for even sizes anchored like SciPy's ndimage.binary_dilation
    (size 8: dy, dx ∈ [-3, +4], i.e. a foreground pixel grows 4 px up/left and 3 px down/right).
    """
    lo = -((size - 1) // 2)
    hi = size // 2
    H, W = mask.shape
    pad = np.zeros((H + size * 2, W + size * 2), dtype=bool)
    pad[size: size + H, size: size + W] = mask > 0
    out = np.zeros((H, W), dtype=bool)
    for dy in range(lo, hi + 1):
        for dx in range(lo, hi + 1):
            out |= pad[size + dy: size + dy + H, size + dx: size + dx + W]
    return out.astype(mask.dtype)


def pixel_unshuffle(x: torch.Tensor, r: int) -> torch.Tensor:
    """[N, C, H, W] → [N, C·r², H/r, W/r]; out[c·r² + i·r + j, y, x] = in[c, y·r + i, x·r + j]."""
    N, C, H, W = x.shape
    x = x.reshape(N, C, H // r, r, W // r, r).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(N, C * r * r, H // r, W // r)


@dataclass
class DepthPrepConfig:
    n_fills: int = 3
    bg_thresh: float = 7e-3
    depth_scale: float = 100.0
    depth_len: int = 192           # square size the depth map and mask are resized to
    dilate_size: int = 8
    downscale: int = 8             # pixel-unshuffle factor; map_len = depth_len / downscale
    border_quirk: bool = True


def prepare_depth(z_raw: np.ndarray, cfg: DepthPrepConfig) -> dict:
    """Raw z map (0 = missing) → everything the RGB-D model needs, with intermediates."""
    filled = fill_gaps(z_raw.astype(np.float64), cfg.n_fills, cfg.border_quirk)
    fg = foreground_mask(filled, cfg.bg_thresh)
    depth = normalize_depth(filled, fg, cfg.depth_scale)
    L = cfg.depth_len
    depth_r = resize_bilinear(torch.from_numpy(depth)[None, None], (L, L))[0, 0]
    fg_r = resize_bilinear(torch.from_numpy(fg)[None, None], (L, L))[0, 0]
    fg_r = (fg_r > 0).to(fg_r.dtype)
    fg_d = torch.from_numpy(dilate(fg_r.numpy(), cfg.dilate_size))
    m = L // cfg.downscale
    fg_down = resize_bilinear(fg_d[None, None], (m, m))[0, 0]       # fractional, NOT binarised
    depth_unshuffled = pixel_unshuffle(depth_r[None, None], cfg.downscale)[0]
    return dict(filled=filled, fg=fg, depth_norm=depth, depth_resized=depth_r.numpy(),
                fg_resized=fg_r.numpy(), fg_dilated=fg_d.numpy(), fg_down=fg_down.numpy(),
                depth_unshuffled=depth_unshuffled.numpy())


def masked_maps(z_teacher: torch.Tensor, z_student: torch.Tensor, fg_down: torch.Tensor) -> dict:
    """Depth-mode / RGB-D maps as the authors evaluate them (fg_down [N, h, w], fractional):

    per-pixel loss      l = fg_down · mean_c (z_t − z_s)²      (the foreground-masked training loss)
    evaluation map      M = fg_down · l = fg_down² · mean_c(...) (masked a second time at evaluation)
    mean score          = mean over pixels of l (all pixels, not only foreground)
    max score           = max of M (at feature resolution, or of its bicubic upsampling)
    """
    d = distance_map(z_teacher, z_student)
    loss_pp = fg_down * d
    return dict(distance=d, loss_per_pixel=loss_pp, map=fg_down * loss_pp)
