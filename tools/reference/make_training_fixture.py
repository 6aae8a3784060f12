"""Training parity fixture: gradients and Adam steps of the reference model, computed by PyTorch autograd
(an autodiff independent of ours) from the RGB parity fixture's weights and features.

    /usr/bin/python3 tools/reference/make_training_fixture.py

Writes test/fixtures/reference/train/: teacher and student gradients of their losses, the weights after
two Adam steps (lr 2e-4, weight decay 1e-5 as L2, the authors' optimizer) on the same batch, and the
student's BatchNorm running statistics after those steps. Everything in float64, stored as float32.
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
FIX = os.path.join(REPO, "test", "fixtures", "reference")
OUT = os.path.join(FIX, "train")
LR, WD, STEPS = 2e-4, 1e-5, 2


def main() -> None:
    torch.set_default_dtype(torch.float64)
    cfg = json.load(open(os.path.join(FIX, "config.json")))
    t_sd = {k: torch.from_numpy(np.asarray(v)) for k, v in read_safetensors(os.path.join(FIX, "teacher.safetensors")).items()}
    s_sd = {k: torch.from_numpy(np.asarray(v)) for k, v in read_safetensors(os.path.join(FIX, "student.safetensors")).items()}
    feats = torch.from_numpy(np.load(os.path.join(FIX, "features.npy"))).double()
    n, c, h, w = feats.shape
    tc = cfg["teacher"]
    sc = cfg["student"]
    teacher = ref.TeacherFlow(ref.TeacherConfig(channels=c, cond_channels=32, hidden=tc["hidden"], kernel_sizes=tuple(tc["kernel_sizes"]), clamp=tc["clamp"])).double()
    teacher.load_reference_state_dict({k: v.double() if v.is_floating_point() else v for k, v in t_sd.items()})
    pos = ref.positional_encoding(32, h, w, torch.float64)[None].repeat(n, 1, 1, 1)

    def teacher_loss():
        z, ld = teacher(feats, pos)
        return ref.teacher_nll(z, ld).mean(), z

    def named_grads(model_sd_fn):
        return {k: v for k, v in model_sd_fn().items()}

    # --- teacher: gradient of the NLL, then two Adam steps -------------------------------------
    loss, _ = teacher_loss()
    teacher.zero_grad()
    loss.backward()
    grads = {}
    for i, cp in enumerate(teacher.couplings):
        pre = ref.teacher_key_prefix(i)
        for side in ("s1", "s2"):
            sub = getattr(cp, side)
            grads[f"{pre}.{side}.gamma"] = sub.gamma.grad
            for conv in ("conv1", "conv2"):
                grads[f"{pre}.{side}.{conv}.weight"] = getattr(sub, conv).weight.grad
                grads[f"{pre}.{side}.{conv}.bias"] = getattr(sub, conv).bias.grad
    os.makedirs(OUT, exist_ok=True)
    write_safetensors(os.path.join(OUT, "teacher_grads.safetensors"), {k: v.detach().numpy().astype(np.float32) for k, v in grads.items()})
    losses = {"teacher_loss": float(loss)}
    opt = torch.optim.Adam(teacher.parameters(), lr=LR, weight_decay=WD)
    teacher_losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        l, _ = teacher_loss()
        l.backward()
        opt.step()
        teacher_losses.append(float(l))
    losses["teacher_step_losses"] = teacher_losses
    after = {k: v for k, v in teacher.reference_state_dict().items() if not k.startswith("perm.")}
    write_safetensors(os.path.join(OUT, "teacher_after_steps.safetensors"), {k: v.detach().numpy().astype(np.float32) for k, v in after.items()})

    # --- student: distillation of the (original) teacher's z, BatchNorm in training mode -------
    teacher.load_reference_state_dict({k: v.double() if v.is_floating_point() else v for k, v in t_sd.items()})
    with torch.no_grad():
        z_target, _ = teacher(feats, pos)
    student = ref.Student(ref.StudentConfig(in_channels=c, out_channels=c, pos_channels=32, width=sc["width"], n_res_blocks=sc["res_blocks"], leaky_slope=sc["leaky_slope"], bn_eps=sc["bn_eps"])).double()
    student.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in s_sd.items()})
    student.train()
    s_loss = ((z_target - student(feats, pos)) ** 2).mean()
    student.zero_grad()
    s_loss.backward()
    s_grads = {k: p.grad for k, p in student.named_parameters() if k != "gamma"}
    write_safetensors(os.path.join(OUT, "student_grads.safetensors"), {k: v.detach().numpy().astype(np.float32) for k, v in s_grads.items()})
    losses["student_loss"] = float(s_loss)
    student.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in s_sd.items()})
    student.train()
    opt = torch.optim.Adam([p for k, p in student.named_parameters() if k != "gamma"], lr=LR, weight_decay=WD)
    student_losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        l = ((z_target - student(feats, pos)) ** 2).mean()
        l.backward()
        opt.step()
        student_losses.append(float(l))
    losses["student_step_losses"] = student_losses
    s_after = {k: v for k, v in student.state_dict().items() if k != "gamma" and not k.endswith("num_batches_tracked")}
    write_safetensors(os.path.join(OUT, "student_after_steps.safetensors"), {k: v.detach().numpy().astype(np.float32) for k, v in s_after.items()})
    losses.update({"steps": STEPS, "lr": LR, "weight_decay": WD, "optimizer": "torch.optim.Adam (L2 weight decay), betas (0.9, 0.999), eps 1e-8",
                   "bn_momentum": 0.1, "computed_in": "float64"})
    json.dump(losses, open(os.path.join(OUT, "losses.json"), "w"), indent=2)
    print(json.dumps(losses, indent=2))


if __name__ == "__main__":
    main()
