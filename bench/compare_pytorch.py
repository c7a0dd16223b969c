#!/usr/bin/env python3
"""compressd's engine vs plain PyTorch on the same ANALYZE; prints Markdown.

Usage: /usr/bin/python3 bench/compare_pytorch.py [--engine BIN] [--runs 2]
           [--threads 2] [--models fmnist_cnn,fmnist_vit,resnet18]

Per model, both sides get the same TorchScript file, the same batch (one
torch.save'd dict written here under bench/out/: the first 64 Fashion-MNIST
test images as float32 in [0, 1] with their labels, or 4 random 224x224
images with random labels for resnet18), the same thread count and the same
work: Hutchinson per-layer traces, then the top eigenvalue by power
iteration, with the same stopping rules (bench/pytorch_reference.py copies
the engine's). Engine: `bench_analyze analyze` (RunAnalysis, default exact
HVPs); PyTorch: bench/pytorch_reference.py. Runs alternate between the two;
times are medians over --runs, measured inside each process from the model
load on (the process wall, interpreter and library start included, is
shown as well). Random probes differ between the two, so traces agree only
within their standard errors and the trace probe counts may differ when a
tolerance (not a fixed count) stops them.
"""
import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = "/usr/share/datasets/fashion-mnist"

# name: (model, data, batch, trace args, eigen args)
EIGEN = {"eig-tol": 1e-3, "eig-max": 100}


def fmnist_batch(path, n):
    with gzip.open(os.path.join(FMNIST, "t10k-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16)
    with gzip.open(os.path.join(FMNIST, "t10k-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    inputs = torch.from_numpy(images[: n * 784].copy()).view(n, 1, 28, 28)
    torch.save({"inputs": inputs.float() / 255,
                "targets": torch.from_numpy(labels[:n].copy()).long()}, path)


def random_batch(path, n, shape, classes):
    g = torch.Generator().manual_seed(1234)
    torch.save({"inputs": torch.rand((n,) + shape, generator=g),
                "targets": torch.randint(0, classes, (n,), generator=g)}, path)


def run(cmd):
    start = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         cwd=ROOT)
    wall = time.perf_counter() - start
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = wall
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", default=os.path.join(
        os.environ.get("BUILD_DIR", "build"), "bench", "bench_analyze"))
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="fmnist_cnn,fmnist_vit,resnet18")
    ap.add_argument("--trace-max", type=int, default=50,
                    help="Fashion-MNIST models: max trace probes (tolerance "
                    "0.05, min 10: the engine's defaults; its max is 200)")
    ap.add_argument("--resnet-probes", type=int, default=10,
                    help="resnet18: fixed trace probe count (min = max)")
    args = ap.parse_args()

    out_dir = os.path.join(ROOT, "bench", "out")
    os.makedirs(out_dir, exist_ok=True)
    fmnist = os.path.join(out_dir, "fmnist_test64.pt")
    resnet_data = os.path.join(out_dir, "resnet18_batch4.pt")
    if not os.path.exists(fmnist):
        fmnist_batch(fmnist, 64)
    if not os.path.exists(resnet_data):
        random_batch(resnet_data, 4, (3, 224, 224), 10)
    trace_default = {"trace-tol": 0.05, "trace-min": 10,
                     "trace-max": args.trace_max}
    resnet_trace = {"trace-tol": 0.05, "trace-min": args.resnet_probes,
                    "trace-max": args.resnet_probes}
    configs = {
        "fmnist_cnn": ("models/fmnist_cnn.pt", fmnist, 64, trace_default),
        "fmnist_vit": ("models/fmnist_vit.pt", fmnist, 64, trace_default),
        "resnet18": ("bench/out/resnet18.pt", resnet_data, 4, resnet_trace),
    }

    print("## compressd engine vs plain PyTorch (same ANALYZE)\n")
    sys.stdout.flush()
    subprocess.run([args.engine, "runtime", f"--threads={args.threads}"],
                   check=True, cwd=ROOT)
    print(f"- torch {torch.__version__} (Python, same Debian libtorch as the "
          f"engine), {args.threads} intra-op threads on both sides, "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')}")
    print("- work: per-layer Hutchinson traces (tolerance, min/max probes as "
          "listed; stop when every layer's SE/|trace| <= tolerance), then the "
          f"top eigenvalue (power iteration, tol {EIGEN['eig-tol']:g}, max "
          f"{EIGEN['eig-max']} iterations, the engine's stopping rule on both "
          "sides); exact HVPs, one cached first-order graph")
    print(f"- times: median of {args.runs} runs, alternating, inside each "
          "process from the model load on; process = whole process incl. "
          "interpreter/library start; s/HVP = time / HVPs\n")
    rows = []
    for name in args.models.split(","):
        model, data, batch, trace = configs[name]
        common = [f"--{k}={v}" for k, v in {**trace, **EIGEN}.items()]
        engine_cmd = [args.engine, "analyze", f"--model={model}",
                      f"--data={data}", f"--batch={batch}", "--eigen",
                      f"--threads={args.threads}"] + common
        py_cmd = [sys.executable, "bench/pytorch_reference.py",
                  "--model", model, "--data", data,
                  "--threads", str(args.threads)]
        for k, v in {**trace, **EIGEN}.items():
            py_cmd += [f"--{k}", str(v)]
        engine, python = [], []
        for r in range(args.runs):
            order = [(engine_cmd, engine), (py_cmd, python)]
            if r % 2:
                order.reverse()
            for cmd, results in order:
                results.append(run(cmd))
        rows.append((name, batch, trace, engine, python))
        print(f"<!-- {name}: engine {json.dumps(engine)} -->", file=sys.stderr)
        print(f"<!-- {name}: pytorch {json.dumps(python)} -->", file=sys.stderr)

    print("| model (batch) | traces: tol, probes | engine s | PyTorch s | "
          "PyTorch / engine | process s engine / PyTorch | HVPs engine / "
          "PyTorch | s/HVP engine / PyTorch |")
    print("|---|---|---:|---:|---:|---|---|---|")
    for name, batch, trace, engine, python in rows:
        e = statistics.median(r["wall_s"] for r in engine)
        p = statistics.median(r["wall_s"] for r in python)
        ep = statistics.median(r["process_s"] for r in engine)
        pp = statistics.median(r["process_s"] for r in python)
        eh = statistics.median(r["hvps"] for r in engine)
        ph = statistics.median(r["hvps"] for r in python)
        print(f"| {name} ({batch}) | {trace['trace-tol']:g}, "
              f"{trace['trace-min']}-{trace['trace-max']} | {e:.1f} | "
              f"{p:.1f} | {p / e:.2f} | {ep:.1f} / {pp:.1f} | "
              f"{eh:g} / {ph:g} | {e / eh:.3f} / {p / ph:.3f} |")
    print()
    print("| model | λ_max engine (iters) | λ_max PyTorch (iters) | rel. diff | "
          "Tr(H) engine ± SE (probes) | Tr(H) PyTorch ± SE (probes) | "
          "|diff| / combined SE |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, batch, trace, engine, python in rows:
        # The first run of each (the numbers are deterministic per seed).
        a, b = engine[0], python[0]
        rel = abs(a["eigenvalue"] - b["eigenvalue"]) / abs(b["eigenvalue"])
        z = abs(a["total_trace"] - b["total_trace"]) / (
            a["total_trace_se"] ** 2 + b["total_trace_se"] ** 2) ** 0.5
        print(f"| {name} | {a['eigenvalue']:.5g} ({a['eigen_iterations']}) | "
              f"{b['eigenvalue']:.5g} ({b['eigen_iterations']}) | {rel:.1e} | "
              f"{a['total_trace']:.5g} ± {a['total_trace_se']:.2g} "
              f"({a['trace_probes']}) | {b['total_trace']:.5g} ± "
              f"{b['total_trace_se']:.2g} ({b['trace_probes']}) | {z:.2f} |")
    hvp_note = "; ".join(
        f"{name} {statistics.median(r['hvp_s'] / r['hvps'] for r in python):.3f}"
        for name, _, _, _, python in rows)
    print(f"\n- PyTorch time inside torch.autograd.grad per HVP (s): {hvp_note}")


if __name__ == "__main__":
    main()
