"""PyTorch timings for bench/detector.bench.ts: the same shapes run through our PyTorch model of AST
(tools/reference/ast_reference.py), eval mode, no_grad, float32, a fixed thread count.

Two ways to run it:
  --serve   line protocol on stdin/stdout, one JSON object per line, so the benchmark can interleave
            PyTorch runs with ONNX Runtime runs (background load then hits both alike):
              {"cmd": "prepare", "model": "teacher", "batch": 8, "warmup": 2}  → {"ok": true}
              {"cmd": "run"}                                                 → {"ms": 123.4}
              {"cmd": "quit"}
  otherwise  times --models × --batches on its own and prints one JSON object:
             {"torch": version, "threads": n, "results": [{"model", "batch", "ms": [...]}]}.
Models: teacher (C=304, 24×24, hidden 64, kernels 3,3,3,5), student256, student1024 (4 residual blocks),
paper-head (teacher + student1024 + distance map). Benchmark only: nothing in the product runs Python.
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

C, S, P = 304, 24, 32


def teacher() -> TeacherFlow:
    t = TeacherFlow(TeacherConfig(C, cond_channels=P, hidden=64, kernel_sizes=(3, 3, 3, 5))).eval()
    with torch.no_grad():  # γ = 0 would make the flow the identity; any value times the same
        for cp in t.couplings:
            cp.s1.gamma.fill_(0.1)
            cp.s2.gamma.fill_(0.1)
    return t


def student(width: int) -> Student:
    return Student(StudentConfig(C, C, pos_channels=P, width=width, n_res_blocks=4)).eval()


def model_fn(name: str):
    if name == "teacher":
        t = teacher()
        return lambda x, c: t(x, c)[0]
    if name.startswith("student"):
        s = student(int(name[len("student"):]))
        return lambda x, c: s(x, c)
    if name == "paper-head":
        t, s = teacher(), student(1024)
        return lambda x, c: distance_map(t(x, c)[0], s(x, c))
    raise SystemExit(f"unknown model {name}")


def inputs(batch: int):
    x = torch.randn(batch, C, S, S)
    cond = positional_encoding(P, S, S, torch.float32)[None].expand(batch, -1, -1, -1).contiguous()
    return x, cond


def timed(fn, x, cond) -> float:
    with torch.no_grad():
        t0 = time.perf_counter()
        fn(x, cond)
        return (time.perf_counter() - t0) * 1000


def serve() -> None:
    fn = x = cond = None
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "prepare":
            fn = None  # free the previous model first
            fn = model_fn(msg["model"])
            x, cond = inputs(int(msg["batch"]))
            for _ in range(int(msg.get("warmup", 1))):
                timed(fn, x, cond)
            reply = {"ok": True, "torch": torch.__version__, "threads": torch.get_num_threads()}
        elif msg["cmd"] == "run":
            reply = {"ms": timed(fn, x, cond)}
        elif msg["cmd"] == "quit":
            break
        else:
            reply = {"error": f"unknown command {msg['cmd']}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--serve", action="store_true")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--models", default="teacher,student256,student1024,paper-head")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--budget", type=float, default=30.0, help="seconds of timed runs per case (at least 3 runs)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.serve:
        serve()
        return
    results = []
    for name in a.models.split(","):
        fn = model_fn(name)
        for b in [int(v) for v in a.batches.split(",")]:
            x, cond = inputs(b)
            for _ in range(a.warmup):
                timed(fn, x, cond)
            times: list[float] = []
            start = time.perf_counter()
            while len(times) < a.reps and (len(times) < 3 or time.perf_counter() - start < a.budget):
                times.append(timed(fn, x, cond))
            results.append({"model": name, "batch": b, "ms": times})
            print(f"torch {name} N={b}: {sorted(times)[len(times) // 2]:.1f} ms", file=sys.stderr)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "results": results}))


if __name__ == "__main__":
    main()
