"""Self-checks of the reference maths and of the committed fixtures:

    /usr/bin/python3 tools/reference/check_reference.py

* the flow's inverse reconstructs its input;
* the per-pixel log-det summed over pixels equals log|det J| from autograd's full Jacobian;
* dilation, pixel unshuffle, positional encoding and gap filling agree with independent formulations;
* the fixture files reload (hand-written safetensors) and reproduce the stored expected outputs.
"""
from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import ast_reference as ref  # noqa: E402
from npyio import read_safetensors  # noqa: E402
from make_fixture import OUT, SUBNET_GAIN, randomize_teacher  # noqa: E402

torch.set_default_dtype(torch.float64)


def ok(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name + (f"  ({detail})" if detail else ""))
    if not cond:
        raise SystemExit(1)


def tiny_teacher(C=6, hidden=5, kernels=(3, 3, 3, 5), seed=0):
    t = ref.TeacherFlow(ref.TeacherConfig(channels=C, cond_channels=4, hidden=hidden, kernel_sizes=kernels))
    randomize_teacher(t, torch.Generator().manual_seed(seed))
    return t.double()


def check_inverse():
    for C in (6, 7):                                   # odd C: unequal halves
        t = tiny_teacher(C=C)
        x = torch.randn(2, C, 5, 6)
        cond = ref.positional_encoding(4, 5, 6)[None].repeat(2, 1, 1, 1)
        z, _ = t(x, cond)
        back = t.inverse(z, cond)
        err = float((back - x).abs().max())
        ok(f"flow inverse reconstructs input (C={C})", err < 1e-10, f"max err {err:.2e}")


def check_logdet():
    for C, (H, W) in ((6, (3, 4)), (5, (4, 3))):
        t = tiny_teacher(C=C, seed=3)
        cond = ref.positional_encoding(4, H, W)[None]
        x = torch.randn(1, C, H, W)

        def f(v):
            return t(v.reshape(1, C, H, W), cond)[0].reshape(-1)

        J = torch.autograd.functional.jacobian(f, x.reshape(-1))
        sign, logabs = torch.linalg.slogdet(J)
        _, ld = t(x, cond)
        ok(f"log-det == log|det J| from autograd (C={C}, {H}x{W})",
           abs(float(logabs) - float(ld.sum())) < 1e-8 and float(sign) > 0,
           f"{float(logabs):.10f} vs {float(ld.sum()):.10f}")


def check_dilate():
    from scipy.ndimage import binary_dilation
    rng = np.random.RandomState(0)
    for size in (8, 5, 4, 3):
        m = (rng.rand(23, 31) < 0.04).astype(np.float64)
        m[0, 5] = m[22, 30] = 1
        ours = ref.dilate(m, size)
        sp = binary_dilation(m, np.ones([size, size])).astype(np.float64)
        ok(f"dilation matches scipy.ndimage.binary_dilation (size {size})", np.array_equal(ours, sp))


def check_unshuffle():
    x = torch.randn(2, 3, 16, 24)
    ok("pixel_unshuffle matches torch.nn.PixelUnshuffle",
       torch.equal(ref.pixel_unshuffle(x, 8), torch.nn.PixelUnshuffle(8)(x)))


def check_pos():
    D, H, W = 32, 5, 7
    pe = ref.positional_encoding(D, H, W)
    worst = 0.0
    for c in range(D):
        half = D // 2
        j = (c % half) // 2
        f = math.exp(-(2 * j) * math.log(10000.0) / half)
        for y in range(H):
            for x in range(W):
                pos = x if c < half else y
                v = math.sin(pos * f) if c % 2 == 0 else math.cos(pos * f)
                worst = max(worst, abs(v - float(pe[c, y, x])))
    ok("positional encoding matches the scalar formula", worst < 1e-12, f"max err {worst:.1e}")


def check_fill_and_background():
    rng = np.random.RandomState(1)
    z = 0.5 + rng.rand(9, 11)
    z[rng.rand(9, 11) < 0.25] = 0
    z[0, 3] = z[4, 0] = z[8, 10] = z[8, 4] = 0

    def literal(img):                              # the natural Python slicing, negative start included
        out = img.copy()
        for y, x in zip(*np.nonzero(img == 0)):
            w = img[y - 1: y + 2, x - 1: x + 2]
            n = np.sum(w > 0)
            if n:
                out[y, x] = np.sum(w) / n
        return out

    ok("fill_gaps_once == literal slicing semantics (border quirk)", np.array_equal(ref.fill_gaps_once(z), literal(z)))
    ok("row 0 / column 0 zeros are left unfilled", ref.fill_gaps_once(z)[0, 3] == 0 and ref.fill_gaps_once(z)[4, 0] == 0)
    f = ref.fill_gaps(z, 3)
    bg = ref.background_surface(f)
    tl, bl, tr, br = ref.corner_means(f)
    ok("background surface passes through the corner means",
       np.allclose([bg[0, 0], bg[-1, 0], bg[0, -1], bg[-1, -1]], [tl, bl, tr, br]))


def check_fixture(folder, mode):
    cfg = json.load(open(os.path.join(folder, "config.json")))
    tsd = {k: torch.from_numpy(v) for k, v in read_safetensors(os.path.join(folder, "teacher.safetensors")).items()}
    ssd = {k: torch.from_numpy(v) for k, v in read_safetensors(os.path.join(folder, "student.safetensors")).items()}
    C = cfg["C"]
    t = ref.TeacherFlow(ref.TeacherConfig(channels=C, hidden=cfg["teacher"]["hidden"],
                                          kernel_sizes=tuple(cfg["teacher"]["kernel_sizes"]), clamp=cfg["teacher"]["clamp"]))
    t.load_reference_state_dict(tsd)
    for i in range(len(t.couplings)):
        ok(f"[{mode}] perm.{i} == np.random.seed({i}); permutation({C})",
           np.array_equal(tsd[f"perm.{i}"].numpy(), ref.block_permutation(i, C)))
    n_in = C
    s = ref.Student(ref.StudentConfig(in_channels=n_in, out_channels=C, width=cfg["student"]["width"],
                                      n_res_blocks=cfg["student"]["res_blocks"]))
    s.load_state_dict(ssd, strict=True)
    t, s = t.double(), s.double().eval()
    load = lambda n: torch.from_numpy(np.load(os.path.join(folder, n))).double()  # noqa: E731
    feats = load("features.npy")
    x = feats if mode == "rgb" else torch.cat([feats, load("depth_unshuffled.npy")], 1)
    pos = load("pos.npy")
    ok(f"[{mode}] pos.npy", float((pos - ref.positional_encoding(32, pos.shape[1], pos.shape[2])).abs().max()) < 1e-6)
    cond = pos[None].repeat(x.shape[0], 1, 1, 1)
    with torch.no_grad():
        z, ld = t(x, cond)
        zs = s(x, cond)
    rel = lambda a, b: float((a - b).abs().max() / b.abs().max())  # noqa: E731
    ok(f"[{mode}] z.npy reproduced", rel(z, load("z.npy")) < 1e-6)
    ok(f"[{mode}] logdet.npy reproduced", rel(ld, load("logdet.npy")) < 1e-6)
    ok(f"[{mode}] student.npy reproduced", rel(zs, load("student.npy")) < 1e-6)
    d = ref.distance_map(z, zs)
    if mode == "rgb":
        amap = d
    else:
        fgd = load("fg_down.npy")
        amap = fgd * fgd * d
        raw = np.load(os.path.join(folder, "depth_raw.npy"))
        dc = ref.DepthPrepConfig(depth_len=cfg["H"] * 8)
        for i in range(raw.shape[0]):
            pr = ref.prepare_depth(raw[i], dc)
            ok(f"[{mode}] depth prep of sample {i} reproduced",
               np.array_equal(pr["fg"], np.load(os.path.join(folder, "fg_raw.npy"))[i])
               and np.abs(pr["depth_unshuffled"] - np.load(os.path.join(folder, "depth_unshuffled.npy"))[i]).max() < 1e-4)
    ok(f"[{mode}] map.npy reproduced", rel(amap, load("map.npy")) < 1e-6)
    sc = json.load(open(os.path.join(folder, "scores.json")))["samples"]
    ok(f"[{mode}] scores.json max/max_upsampled consistent",
       all(abs(a["max"] - float(amap[i].max())) < 1e-5 * a["max"] for i, a in enumerate(sc))
       and all(abs(a["max_upsampled"] - float(ref.upsample_map(amap, 8)[i].max())) < 1e-5 * a["max_upsampled"]
               for i, a in enumerate(sc)))


if __name__ == "__main__":
    check_inverse()
    check_logdet()
    check_dilate()
    check_unshuffle()
    check_pos()
    check_fill_and_background()
    check_fixture(OUT, "rgb")
    check_fixture(os.path.join(OUT, "rgbd"), "rgbd")
    print("all checks passed")
