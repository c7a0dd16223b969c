#!/usr/bin/env python3
"""Plain-PyTorch reference for an ANALYZE: Hutchinson traces + top eigenvalue.

What a competent user would write (PyHessian style) to get the same numbers
as compressd's ANALYZE with the exact HVP method: load the TorchScript model
in eval mode, take the gradient of the mean cross-entropy with
create_graph=True once, and get every Hessian-vector product from that one
graph with torch.autograd.grad(grads, params, grad_outputs=v,
retain_graph=True).

Estimators and stopping rules are the engine's (server/engine/hessian/
estimators.cc), so both sides do the same number of products:
  - traces first: one Rademacher probe over all parameters per HVP, layer
    estimate v_l.(Hv)_l (a layer = the parameters of one module); stop once
    every layer's standard error / |mean| <= --trace-tol after at least
    --trace-min probes, or at --trace-max probes. The whole-model trace is
    the mean of the per-probe sums, its SE their standard error.
  - then the top eigenvalue by power iteration from a Gaussian start: stop
    when d/(1 - q) <= tol |lambda| (d the last change of the Rayleigh
    quotient, q the ratio of the last two changes; after 3 iterations), or
    at --eig-max iterations. --stop=pyhessian uses PyHessian's rule instead
    (|lambda - lambda_prev| / (|lambda_prev| + 1e-6) < tol).
The forward pass runs the TorchScript graph unoptimised, as the engine does
(torch.jit.optimized_execution(False)); --jit-optimize uses the default
profiling executor instead.

Usage:
  /usr/bin/python3 bench/pytorch_reference.py --model M.pt --data D.pt \
      [--threads 2] [--trace-tol 0.05 --trace-min 10 --trace-max 200] \
      [--eig-tol 1e-3 --eig-max 100] [--seed 0]
Data: a torch.save'd dict with 'inputs' (float) and 'targets' (int64).
Prints one JSON line (times in seconds, from the model load on).
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F


class Running:
    """Running mean and variance (Welford), as the engine's."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, x):
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    def std_error(self):
        if self.n < 2:
            return math.inf
        return math.sqrt(self.m2 / (self.n - 1) / self.n)

    def relative_error(self):
        se = self.std_error()
        if se == 0:
            return 0.0
        return math.inf if self.mean == 0 else se / abs(self.mean)


def dot(xs, ys):
    return sum(torch.sum(x * y).item() for x, y in zip(xs, ys))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trace-tol", type=float, default=0.05)
    ap.add_argument("--trace-min", type=int, default=10)
    ap.add_argument("--trace-max", type=int, default=200)
    ap.add_argument("--eig-tol", type=float, default=1e-3)
    ap.add_argument("--eig-max", type=int, default=100)
    ap.add_argument("--stop", choices=["engine", "pyhessian"], default="engine")
    ap.add_argument("--jit-optimize", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()

    model = torch.jit.load(args.model, map_location="cpu")
    model.eval()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    # Layers: parameters grouped by their module path, in order.
    layer_of, layers = [], []
    for name, _ in named:
        module = name.rsplit(".", 1)[0] if "." in name else ""
        if not layers or layers[-1] != module:
            layers.append(module)
        layer_of.append(len(layers) - 1)
    data = torch.load(args.data)
    inputs = data["inputs"].float()
    targets = data["targets"].long()
    loaded = time.perf_counter()

    # First-order graph, once.
    with torch.jit.optimized_execution(args.jit_optimize):
        out = model(inputs)
    loss = F.cross_entropy(out, targets)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    first_order = time.perf_counter()

    hvps = 0
    hvp_seconds = 0.0

    def hvp(v):
        nonlocal hvps, hvp_seconds
        t = time.perf_counter()
        hv = torch.autograd.grad(grads, params, grad_outputs=v,
                                 retain_graph=True)
        hvp_seconds += time.perf_counter() - t
        hvps += 1
        return hv

    # Hutchinson traces.
    trace_start = time.perf_counter()
    stats = [Running() for _ in layers]
    total = Running()
    for _ in range(args.trace_max):
        v = [torch.randint_like(p, high=2) * 2 - 1 for p in params]
        hv = hvp(v)
        per_layer = [0.0] * len(layers)
        for i, (x, y) in enumerate(zip(v, hv)):
            per_layer[layer_of[i]] += torch.sum(x * y).item()
        for s, e in zip(stats, per_layer):
            s.add(e)
        total.add(sum(per_layer))
        if total.n >= args.trace_min and all(
                s.relative_error() <= args.trace_tol for s in stats):
            break
    trace_probes = total.n
    trace_seconds = time.perf_counter() - trace_start

    # Top eigenvalue by power iteration.
    eig_start = time.perf_counter()
    v = [torch.randn_like(p) for p in params]
    norm = math.sqrt(dot(v, v))
    v = [x / norm for x in v]
    lam, change, it, converged = 0.0, 0.0, 0, False
    while it < args.eig_max:
        hv = hvp(v)
        it += 1
        previous = lam
        lam = dot(v, hv)
        norm = math.sqrt(dot(hv, hv))
        if norm == 0:
            converged = True
            break
        if args.stop == "pyhessian":
            if it > 1 and abs(lam - previous) / (abs(previous) + 1e-6) < args.eig_tol:
                converged = True
                break
        elif it > 1:
            d = abs(lam - previous)
            q = min(d / change, 0.999) if change > 0 else (0.0 if d == 0 else 0.999)
            change = d
            if (it > 2 or d == 0) and d / (1 - q) <= args.eig_tol * abs(lam):
                converged = True
                break
        v = [x / norm for x in hv]
    eig_seconds = time.perf_counter() - eig_start
    end = time.perf_counter()

    print(json.dumps({
        "impl": "pytorch",
        "threads": torch.get_num_threads(),
        "layers": len(layers),
        "params": sum(p.numel() for p in params),
        "wall_s": end - start,
        "load_s": loaded - start,
        "first_order_s": first_order - loaded,
        "trace_s": trace_seconds,
        "eigen_s": eig_seconds,
        "hvps": hvps,
        "hvp_s": hvp_seconds,
        "trace_probes": trace_probes,
        "total_trace": total.mean,
        "total_trace_se": total.std_error(),
        "eigenvalue": lam,
        "eigen_iterations": it,
        "eigen_converged": converged,
    }))


if __name__ == "__main__":
    main()
