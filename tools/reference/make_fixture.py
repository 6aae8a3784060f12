"""Generate the AST parity fixtures under test/fixtures/reference/ (run from anywhere):

    /usr/bin/python3 tools/reference/make_fixture.py

Deterministic (fixed seeds). Inputs and weights are drawn in float32 and stored as float32; the expected
outputs are computed in float64 from exactly those float32 values, then stored as float32. config.json
records every hyper-parameter and how far a plain float32 evaluation lands from the float64 truth.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import ast_reference as ref  # noqa: E402
from npyio import read_safetensors, write_safetensors  # noqa: E402

REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
OUT = os.path.join(REPO, "test", "fixtures", "reference")

SUBNET_GAIN = 1.1          # conv weights ~ N(0, (gain / sqrt(fan_in))²): log-scales reach the atan knee
GAMMA_RANGE = (0.3, 0.8)   # non-zero so the flow is not the identity


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def save_npy(folder: str, name: str, arr, files: list, dtype=np.float32) -> None:
    a = np.array(arr, dtype=dtype, order="C")
    np.save(os.path.join(folder, name), a)
    files.append({"file": name, "dtype": str(a.dtype), "shape": list(a.shape)})


def randomize_teacher(t: ref.TeacherFlow, gen: torch.Generator) -> None:
    with torch.no_grad():
        for cp in t.couplings:
            for sub in (cp.s1, cp.s2):
                lo, hi = GAMMA_RANGE
                sub.gamma.copy_(lo + (hi - lo) * torch.rand(1, generator=gen))
                for conv in (sub.conv1, sub.conv2):
                    fan = conv.weight[0].numel()
                    conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (SUBNET_GAIN / fan ** 0.5))
                    conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * 0.1)


def randomize_student(s: ref.Student, gen: torch.Generator) -> None:
    with torch.no_grad():
        convs = [s.conv1, s.conv2] + [c for b in s.res for c in (b.l1, b.l2)]
        for conv in convs:
            fan = conv.weight[0].numel()
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (1.0 / fan ** 0.5))
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * 0.1)
        for b in s.res:
            for bn in (b.bn1, b.bn2):
                n = bn.num_features
                bn.weight.copy_(0.5 + torch.rand(n, generator=gen))
                bn.bias.copy_(torch.randn(n, generator=gen) * 0.2)
                bn.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
                bn.running_var.copy_(0.4 + 1.6 * torch.rand(n, generator=gen))
                bn.num_batches_tracked.fill_(1234)
    s.eval()


def student_state(s: ref.Student) -> dict:
    return {k: v.detach().numpy() for k, v in s.state_dict().items()}


def features_like(gen: torch.Generator, n: int, c: int, h: int, w: int) -> torch.Tensor:
    """Random features with some spatial structure, plus a local bump in the last sample."""
    yy = torch.arange(h, dtype=torch.float32)[:, None]
    xx = torch.arange(w, dtype=torch.float32)[None, :]
    phase = torch.rand(c, 1, 1, generator=gen) * 6.28
    fy = 0.3 + torch.rand(c, 1, 1, generator=gen)
    fx = 0.3 + torch.rand(c, 1, 1, generator=gen)
    smooth = torch.sin(fy * yy + fx * xx + phase)
    f = 0.7 * torch.randn(n, c, h, w, generator=gen) + smooth[None]
    f[-1, :, h // 2 - 1: h // 2 + 1, w // 3: w // 3 + 2] += 2.5
    return f.float()


def run_models(teacher, student, feats, pos, dtype):
    t = ref.TeacherFlow(teacher.cfg)
    t.load_state_dict(teacher.state_dict())
    s = ref.Student(student.cfg)
    s.load_state_dict(student.state_dict())
    t, s = t.to(dtype), s.to(dtype).eval()
    x = feats.to(dtype)
    cond = pos.to(dtype)[None].repeat(x.shape[0], 1, 1, 1)
    with torch.no_grad():
        z, ld, bz, bl = t(x, cond, return_blocks=True)
        zs = s(x, cond)
    return z, ld, bz, bl, zs


def deviation(a64: torch.Tensor, a32: torch.Tensor) -> dict:
    d = (a64 - a32.double()).abs()
    return {"max_abs": float(d.max()), "max_rel": float((d / a64.abs().clamp_min(1e-3)).max())}


def check_safetensors_roundtrip(path: str, tensors: dict) -> None:
    back = read_safetensors(path)
    assert set(back) == set(tensors), (set(back) ^ set(tensors))
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v), k


def folder_size(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(folder) for f in fs)


# ----------------------------------------------------------------------------------------------
# RGB fixture
# ----------------------------------------------------------------------------------------------

RGB = dict(N=2, C=24, H=8, W=12, pos_channels=32, teacher_hidden=16, kernel_sizes=[3, 3, 3, 5],
           clamp=1.9, student_width=24, student_res_blocks=4, leaky_slope=0.01, bn_eps=1e-5,
           upsample_factor=8, seed=20230103)


def make_rgb(folder: str) -> None:
    p = RGB
    os.makedirs(folder, exist_ok=True)
    gen = torch.Generator().manual_seed(p["seed"])
    tcfg = ref.TeacherConfig(channels=p["C"], cond_channels=p["pos_channels"], hidden=p["teacher_hidden"],
                             kernel_sizes=tuple(p["kernel_sizes"]), clamp=p["clamp"])
    scfg = ref.StudentConfig(in_channels=p["C"], out_channels=p["C"], pos_channels=p["pos_channels"],
                             width=p["student_width"], n_res_blocks=p["student_res_blocks"],
                             leaky_slope=p["leaky_slope"], bn_eps=p["bn_eps"])
    teacher, student = ref.TeacherFlow(tcfg), ref.Student(scfg)
    randomize_teacher(teacher, gen)
    randomize_student(student, gen)
    feats = features_like(gen, p["N"], p["C"], p["H"], p["W"])
    pos = ref.positional_encoding(p["pos_channels"], p["H"], p["W"], torch.float64)

    files: list = []
    tsd = {k: v.numpy() for k, v in teacher.reference_state_dict().items()}
    write_safetensors(os.path.join(folder, "teacher.safetensors"), tsd,
                      {"source": "ast-edge tools/reference (random weights)", "layout": "AST reference, perm.i extra"})
    check_safetensors_roundtrip(os.path.join(folder, "teacher.safetensors"), tsd)
    ssd = student_state(student)
    write_safetensors(os.path.join(folder, "student.safetensors"), ssd,
                      {"source": "ast-edge tools/reference (random weights)", "layout": "AST reference"})
    check_safetensors_roundtrip(os.path.join(folder, "student.safetensors"), ssd)

    z, ld, bz, bl, zs = run_models(teacher, student, feats, pos, torch.float64)
    z32, ld32, _, _, zs32 = run_models(teacher, student, feats, pos.float(), torch.float32)
    amap = ref.distance_map(z, zs)
    amap32 = ref.distance_map(z32, zs32)
    up = ref.upsample_map(amap, p["upsample_factor"])
    scores = ref.image_scores(amap)
    scores_up = ref.image_scores(up)

    save_npy(folder, "features.npy", feats, files)
    save_npy(folder, "pos.npy", pos, files)
    save_npy(folder, "z.npy", z, files)
    save_npy(folder, "logdet.npy", ld, files)
    save_npy(folder, "z_blocks.npy", torch.stack(bz), files)
    save_npy(folder, "logdet_blocks.npy", torch.stack(bl), files)
    save_npy(folder, "student.npy", zs, files)
    save_npy(folder, "map.npy", amap, files)
    save_npy(folder, "map_upsampled.npy", up, files)
    save_npy(folder, "nll_per_pixel.npy", ref.teacher_nll(z, ld), files)
    with open(os.path.join(folder, "scores.json"), "w") as f:
        json.dump({"samples": [{"max": s["max"], "mean": s["mean"], "max_upsampled": u["max"]}
                               for s, u in zip(scores, scores_up)]}, f, indent=2)
    files.append({"file": "scores.json"})
    files += [{"file": "teacher.safetensors", "tensors": {k: [str(v.dtype), list(v.shape)] for k, v in sorted(tsd.items())}},
              {"file": "student.safetensors", "tensors": {k: [str(v.dtype), list(v.shape)] for k, v in sorted(ssd.items())}}]

    config = {
        "mode": "rgb",
        "description": "AST teacher/student parity fixture with random weights (not a trained model).",
        "N": p["N"], "C": p["C"], "H": p["H"], "W": p["W"],
        "positional_encoding": {
            "channels": p["pos_channels"],
            "layout": "ch 0..D/2-1 encode column x: even sin, odd cos; ch D/2..D-1 encode row y likewise",
            "frequencies": "f_j = exp(-(2j) * ln(10000) / (D/2)), j = 0..D/4-1",
        },
        "teacher": {
            "blocks": len(p["kernel_sizes"]), "hidden": p["teacher_hidden"], "kernel_sizes": p["kernel_sizes"],
            "padding": "replicate", "clamp": p["clamp"], "soft_clamp": "clamp * 0.636 * atan(a / clamp)",
            "permutation": "block i: np.random.seed(i); np.random.permutation(C); x = x[:, perm] (stored as perm.i)",
            "split": "x1 = first C//2 channels, x2 = rest; subnet output: first half log-scale a, second half shift t",
            "order": "r2 = s2([x2, P]); y1 = exp(e(a2))*x1 + t2; r1 = s1([y1, P]); y2 = exp(e(a1))*x2 + t1; out [y1, y2]",
            "gamma": "learned scalar multiplying the whole subnet output (after conv2, incl. bias)",
            "subnet_activation": "ReLU",
            "logdet": "per pixel: sum over blocks of (sum_c e(a1) + sum_c e(a2))",
            "key_layout": "module_list.{2i+3}.s{1,2}.{gamma,conv1.weight,conv1.bias,conv2.weight,conv2.bias}",
            "gamma_range_in_fixture": list(GAMMA_RANGE),
        },
        "student": {
            "input": "concat([P, features]) (P first)", "width": p["student_width"],
            "res_blocks": p["student_res_blocks"], "leaky_slope": p["leaky_slope"], "bn_eps": p["bn_eps"],
            "padding": "zeros", "mode": "eval (BatchNorm uses running statistics)",
            "res_block": "x + lrelu(bn2(l2(lrelu(bn1(l1(x))))))",
            "extra_keys": "gamma [1] (unused by the forward pass), res.i.bn*.num_batches_tracked (int64 scalar)",
        },
        "map": "mean over channels of (z - student)^2, at feature resolution [N, H, W]",
        "scores": "max / mean of map.npy per sample; max_upsampled = max of map_upsampled.npy",
        "upsampling": {"factor": p["upsample_factor"], "mode": "bicubic", "cubic_a": -0.75,
                       "align_corners": False, "note": "torch F.interpolate (edge-clamped taps)"},
        "nll_per_pixel": "0.5 * sum_c z^2 - logdet",
        "expected_outputs_computed_in": "float64 from the stored float32 inputs/weights",
        "float32_vs_float64": {"z": deviation(z, z32), "logdet": deviation(ld, ld32),
                               "student": deviation(zs, zs32), "map": deviation(amap, amap32)},
        "seed": p["seed"],
        "generator": "tools/reference/make_fixture.py",
        "files": files,
    }
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


# ----------------------------------------------------------------------------------------------
# RGB-D ("combi") fixture
# ----------------------------------------------------------------------------------------------

RGBD = dict(N=2, C_img=8, map_len=8, pos_channels=32, teacher_hidden=6, kernel_sizes=[3, 3, 3, 5],
            clamp=1.9, student_width=16, student_res_blocks=2, leaky_slope=0.01, bn_eps=1e-5,
            raw_h=56, raw_w=72, n_fills=3, bg_thresh=7e-3, depth_scale=100.0, dilate_size=8,
            downscale=8, seed=20230104)


def synthetic_depth(rng: np.random.RandomState, h: int, w: int, sample: int) -> np.ndarray:
    """z map in metres: tilted background plane, a raised dome-shaped part, sensor noise and gaps."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    z = 0.62 + 0.0004 * yy - 0.00025 * xx + rng.normal(0, 0.0004, (h, w))
    cy, cx = (h * 0.5, w * 0.5) if sample == 0 else (h * 0.45, w * 0.58)
    rho2 = ((yy - cy) / (h * 0.27)) ** 2 + ((xx - cx) / (w * 0.25)) ** 2
    dome = 0.03 * np.sqrt(np.clip(1 - rho2, 0, None))
    z = z - dome                               # the part is closer to the camera
    if sample == 1:                            # a dent on the part
        d2 = (yy - cy + 3) ** 2 + (xx - cx - 4) ** 2
        z = z + 0.006 * np.exp(-d2 / 6.0) * (rho2 < 1)
    gaps = rng.rand(h, w) < 0.03
    z[gaps] = 0
    z[int(cy) - 1: int(cy) + 1, int(cx): int(cx) + 3] = 0           # small hole on the part
    z[10:19, 60:69] = 0                                              # 9×9 hole: centre survives 3 fills
    z[0, 0] = 0                                                      # first row/col: never filled (quirk)
    z[0, 40] = 0
    z[33, 0] = 0
    z[h - 1, 20] = 0                                                 # last row: truncated window
    return z.astype(np.float32)


def make_rgbd(folder: str) -> None:
    p = RGBD
    os.makedirs(folder, exist_ok=True)
    gen = torch.Generator().manual_seed(p["seed"])
    rng = np.random.RandomState(p["seed"])
    depth_len = p["map_len"] * p["downscale"]
    dcfg = ref.DepthPrepConfig(n_fills=p["n_fills"], bg_thresh=p["bg_thresh"], depth_scale=p["depth_scale"],
                               depth_len=depth_len, dilate_size=p["dilate_size"], downscale=p["downscale"])
    n_depth = p["downscale"] ** 2
    C = p["C_img"] + n_depth
    tcfg = ref.TeacherConfig(channels=C, cond_channels=p["pos_channels"], hidden=p["teacher_hidden"],
                             kernel_sizes=tuple(p["kernel_sizes"]), clamp=p["clamp"])
    scfg = ref.StudentConfig(in_channels=C, out_channels=C, pos_channels=p["pos_channels"],
                             width=p["student_width"], n_res_blocks=p["student_res_blocks"],
                             leaky_slope=p["leaky_slope"], bn_eps=p["bn_eps"])
    teacher, student = ref.TeacherFlow(tcfg), ref.Student(scfg)
    randomize_teacher(teacher, gen)
    randomize_student(student, gen)
    L = p["map_len"]
    feats = features_like(gen, p["N"], p["C_img"], L, L)
    pos = ref.positional_encoding(p["pos_channels"], L, L, torch.float64)

    raws = np.stack([synthetic_depth(rng, p["raw_h"], p["raw_w"], i) for i in range(p["N"])])
    preps = [ref.prepare_depth(r, dcfg) for r in raws]
    # the foreground decision must not sit on the threshold (float32 vs float64 could flip it)
    for pr in preps:
        f = pr["filled"]
        margin = np.abs(np.abs(ref.background_surface(f) - f) - p["bg_thresh"])[f != 0].min()
        assert margin > 1e-6, f"depth value too close to the threshold ({margin})"
        assert 0 < pr["fg"].mean() < 0.6 and (pr["filled"] == 0).any()
    stack = lambda key: np.stack([pr[key] for pr in preps])  # noqa: E731
    depth_un = torch.from_numpy(stack("depth_unshuffled"))
    fg_down = torch.from_numpy(stack("fg_down"))

    files: list = []
    tsd = {k: v.numpy() for k, v in teacher.reference_state_dict().items()}
    write_safetensors(os.path.join(folder, "teacher.safetensors"), tsd,
                      {"source": "ast-edge tools/reference (random weights)", "layout": "AST reference, perm.i extra"})
    check_safetensors_roundtrip(os.path.join(folder, "teacher.safetensors"), tsd)
    ssd = student_state(student)
    write_safetensors(os.path.join(folder, "student.safetensors"), ssd,
                      {"source": "ast-edge tools/reference (random weights)", "layout": "AST reference"})
    check_safetensors_roundtrip(os.path.join(folder, "student.safetensors"), ssd)

    # the depth tensor enters the model as float32, like the features
    x = torch.cat([feats.double(), depth_un.float().double()], 1)
    z, ld, bz, bl, zs = run_models(teacher, student, x.float(), pos, torch.float64)
    z32, ld32, _, _, zs32 = run_models(teacher, student, x.float(), pos.float(), torch.float32)
    fgd = fg_down.float().double()
    mm = ref.masked_maps(z, zs, fgd)
    mm32 = ref.masked_maps(z32, zs32, fgd.float())
    up = ref.upsample_map(mm["map"], p["downscale"])
    samples = []
    for i in range(p["N"]):
        samples.append({"max": float(mm["map"][i].max()), "mean": float(mm["loss_per_pixel"][i].mean()),
                        "max_upsampled": float(up[i].max())})

    save_npy(folder, "features.npy", feats, files)
    save_npy(folder, "depth_raw.npy", raws, files)
    save_npy(folder, "depth_filled.npy", stack("filled"), files)
    save_npy(folder, "fg_raw.npy", stack("fg"), files)
    save_npy(folder, "depth_normalized.npy", stack("depth_norm"), files)
    save_npy(folder, "depth_resized.npy", stack("depth_resized"), files)
    save_npy(folder, "fg_resized.npy", stack("fg_resized"), files)
    save_npy(folder, "fg_dilated.npy", stack("fg_dilated"), files)
    save_npy(folder, "fg_down.npy", fg_down, files)
    save_npy(folder, "depth_unshuffled.npy", depth_un, files)
    save_npy(folder, "pos.npy", pos, files)
    save_npy(folder, "z.npy", z, files)
    save_npy(folder, "logdet.npy", ld, files)
    save_npy(folder, "student.npy", zs, files)
    save_npy(folder, "distance.npy", mm["distance"], files)
    save_npy(folder, "loss_per_pixel.npy", mm["loss_per_pixel"], files)
    save_npy(folder, "map.npy", mm["map"], files)
    save_npy(folder, "map_upsampled.npy", up, files)
    save_npy(folder, "nll_per_pixel.npy", ref.teacher_nll(z, ld, fgd), files)
    with open(os.path.join(folder, "scores.json"), "w") as f:
        json.dump({"samples": samples}, f, indent=2)
    files.append({"file": "scores.json"})
    files += [{"file": "teacher.safetensors", "tensors": {k: [str(v.dtype), list(v.shape)] for k, v in sorted(tsd.items())}},
              {"file": "student.safetensors", "tensors": {k: [str(v.dtype), list(v.shape)] for k, v in sorted(ssd.items())}}]

    config = {
        "mode": "rgbd",
        "description": "AST RGB-D ('combi') parity fixture: depth preprocessing + masked maps, random weights.",
        "N": p["N"], "C_img": p["C_img"], "depth_channels": n_depth, "C": C, "H": L, "W": L,
        "raw_depth": {"shape": [p["raw_h"], p["raw_w"]], "units": "z in metres, 0 = missing"},
        "depth_prep": {
            "n_fills": p["n_fills"],
            "fill": "per pass, every zero pixel := sum(3x3 window)/count(window > 0), windows read from the "
                    "previous pass; window start index y-1 / x-1 = -1 on row 0 / column 0 makes the window "
                    "EMPTY (those pixels are never filled); on the last row/column the window is truncated",
            "background": "bilinear surface: corner values = mean of positive pixels of each 2x2 corner block, "
                          "placed at pixel (0,0), (H-1,0), (0,W-1), (H-1,W-1); linear in row, then in column",
            "bg_thresh": p["bg_thresh"], "foreground": "|background - z| > bg_thresh and z != 0",
            "normalize": "mean_fg = sum(fg*z)/sum(fg); z := fg*z + (1-fg)*mean_fg; z := (z - mean_fg) * 100",
            "depth_scale": p["depth_scale"],
            "resize": f"depth and fg resized to {depth_len}x{depth_len} (bilinear, align_corners=False, no "
                      "antialias); fg then binarised (> 0)",
            "dilate": f"{p['dilate_size']}x{p['dilate_size']} square of ones at {depth_len}x{depth_len}, "
                      "scipy anchoring: out[y,x] = max in[y+dy, x+dx], dy,dx in [-3, +4]; zero outside",
            "fg_down": f"dilated fg resized bilinear to {L}x{L} (align_corners=False), NOT binarised",
            "unshuffle": f"pixel unshuffle by {p['downscale']}: channel i*{p['downscale']}+j = "
                         f"depth[y*{p['downscale']}+i, x*{p['downscale']}+j]",
        },
        "model_input": "teacher x = concat([features, depth_unshuffled]); student input concat([P, features, "
                       "depth_unshuffled]); student predicts all C channels",
        "positional_encoding": {"channels": p["pos_channels"]},
        "teacher": {"blocks": len(p["kernel_sizes"]), "hidden": p["teacher_hidden"], "kernel_sizes": p["kernel_sizes"],
                    "padding": "replicate", "clamp": p["clamp"], "key_layout": "as rgb"},
        "student": {"width": p["student_width"], "res_blocks": p["student_res_blocks"],
                    "leaky_slope": p["leaky_slope"], "bn_eps": p["bn_eps"]},
        "maps": {
            "distance": "mean_c (z - student)^2",
            "loss_per_pixel": "fg_down * distance (training-mask step)",
            "map": "fg_down * loss_per_pixel = fg_down^2 * distance (evaluation mask applied again)",
            "map_upsampled": f"bicubic x{p['downscale']} of map (a=-0.75, align_corners=False)",
        },
        "scores": "max = max(map), mean = mean(loss_per_pixel) over all pixels, max_upsampled = max(map_upsampled)",
        "nll_per_pixel": "fg_down-masked: 0.5 * sum_c fg_down*z^2 - fg_down*logdet",
        "expected_outputs_computed_in": "float64 from the stored float32 inputs/weights (depth prep in float64 "
                                        "from the float32 raw map; depth_unshuffled rounded to float32 before "
                                        "entering the networks)",
        "float32_vs_float64": {"z": deviation(z, z32), "logdet": deviation(ld, ld32),
                               "student": deviation(zs, zs32), "map": deviation(mm["map"], mm32["map"])},
        "seed": p["seed"],
        "generator": "tools/reference/make_fixture.py",
        "files": files,
    }
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


def main() -> None:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    make_rgb(OUT)
    make_rgbd(os.path.join(OUT, "rgbd"))
    size = folder_size(OUT)
    print(f"wrote {OUT} ({size / 1024:.0f} KiB)")
    assert size < 2 * 1024 * 1024, "fixture folder must stay under 2 MB"


if __name__ == "__main__":
    main()
