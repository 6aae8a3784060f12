"""PyTorch timing of the same training steps as bench/training.bench.ts (our own reference implementation,
tools/reference/ast_reference.py): teacher NLL and student distillation, Adam, batch 8. Prints JSON."""
import json
import sys
import time

import torch

sys.path.insert(0, 'tools/reference')
import ast_reference as ref  # noqa: E402

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
skip_wide = len(sys.argv) > 2 and sys.argv[2] == '1'
torch.set_num_threads(threads)
B = 8


def timed(step, reps=3):
    step()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        ts.append((time.perf_counter() - t) * 1000)
    return sorted(ts)[len(ts) // 2]


def teacher_case(c, h, hidden):
    t = ref.TeacherFlow(ref.TeacherConfig(channels=c, cond_channels=32, hidden=hidden, kernel_sizes=(3, 3, 3, 5)))
    x = torch.randn(B, c, h, h)
    pos = ref.positional_encoding(32, h, h, torch.float32)[None].repeat(B, 1, 1, 1)
    opt = torch.optim.Adam(t.parameters(), lr=2e-4, weight_decay=1e-5)

    def step():
        opt.zero_grad()
        z, ld = t(x, pos)
        ref.teacher_nll(z, ld).mean().backward()
        opt.step()
    return timed(step)


def student_case(c, h, width, blocks):
    s = ref.Student(ref.StudentConfig(in_channels=c, out_channels=c, pos_channels=32, width=width, n_res_blocks=blocks))
    s.train()
    x = torch.randn(B, c, h, h)
    pos = ref.positional_encoding(32, h, h, torch.float32)[None].repeat(B, 1, 1, 1)
    opt = torch.optim.Adam(s.parameters(), lr=2e-4, weight_decay=1e-5)

    def step():
        opt.zero_grad()
        ((x - s(x, pos)) ** 2).mean().backward()
        opt.step()
    return timed(step)


out = {
    'edge teacher (184 ch, 32×32)': teacher_case(184, 32, 64),
    'edge student (w256, 2 blocks)': student_case(184, 32, 256, 2),
    'paper teacher (304 ch, 24×24)': teacher_case(304, 24, 64),
    'paper student w256 (4 blocks)': student_case(304, 24, 256, 4),
}
if not skip_wide:
    out['paper student w1024 (4 blocks)'] = student_case(304, 24, 1024, 4)
print(json.dumps(out))
