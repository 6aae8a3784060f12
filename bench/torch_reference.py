"""PyTorch timings for bench/detector.bench.ts: the same shapes run through our PyTorch model of AST
(tools/reference/ast_reference.py), eval mode, no_grad, float32, a fixed thread count.

Prints one JSON object on stdout: {"torch": version, "threads": n, "results": [{"model", "batch", "ms": [...]}]}.
Benchmark only: nothing in the product runs Python.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "reference"))
from ast_reference import (  # noqa: E402
    Student,
    StudentConfig,
    TeacherConfig,
    TeacherFlow,
    distance_map,
    positional_encoding,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--models", default="teacher,student256,student1024,paper-head")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--budget", type=float, default=30.0, help="seconds of timed runs per case (at least 3 runs)")
    ap.add_argument("--channels", type=int, default=304)
    ap.add_argument("--size", type=int, default=24)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    C, S, P = a.channels, a.size, 32

    def teacher() -> TeacherFlow:
        t = TeacherFlow(TeacherConfig(C, cond_channels=P, hidden=64, kernel_sizes=(3, 3, 3, 5))).eval()
        with torch.no_grad():  # γ = 0 would make the flow the identity; any value times the same
            for cp in t.couplings:
                cp.s1.gamma.fill_(0.1)
                cp.s2.gamma.fill_(0.1)
        return t

    def student(width: int) -> Student:
        return Student(StudentConfig(C, C, pos_channels=P, width=width, n_res_blocks=4)).eval()

    results = []
    for name in a.models.split(","):
        if name == "teacher":
            t = teacher()
            fn = lambda x, c, t=t: t(x, c)[0]  # noqa: E731
        elif name.startswith("student"):
            s = student(int(name[len("student"):]))
            fn = lambda x, c, s=s: s(x, c)  # noqa: E731
        elif name == "paper-head":
            t, s = teacher(), student(1024)
            fn = lambda x, c, t=t, s=s: distance_map(t(x, c)[0], s(x, c))  # noqa: E731
        else:
            raise SystemExit(f"unknown model {name}")
        for b in [int(v) for v in a.batches.split(",")]:
            x = torch.randn(b, C, S, S)
            cond = positional_encoding(P, S, S, torch.float32)[None].expand(b, -1, -1, -1).contiguous()
            times = []
            with torch.no_grad():
                for _ in range(a.warmup):
                    fn(x, cond)
                start = time.perf_counter()
                while len(times) < a.reps and (len(times) < 3 or time.perf_counter() - start < a.budget):
                    t0 = time.perf_counter()
                    fn(x, cond)
                    times.append((time.perf_counter() - t0) * 1000)
            results.append({"model": name, "batch": b, "ms": times})
            print(f"torch {name} N={b}: {sorted(times)[len(times) // 2]:.1f} ms", file=sys.stderr)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "results": results}))


if __name__ == "__main__":
    main()
