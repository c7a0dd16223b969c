#!/usr/bin/python3
"""Trains the Fashion-MNIST reference models and saves them as TorchScript.

    /usr/bin/python3 models/train_reference.py            # both models
    /usr/bin/python3 models/train_reference.py --model cnn

Writes models/fmnist_cnn.pt, models/fmnist_vit.pt (torch.jit.script, eval
mode) and models/reference.json. The test accuracy recorded there is measured
on the 10k test set from the saved file reloaded with torch.jit.load, not from
the in-memory model. Inputs are float32 [N,1,28,28] with raw pixels in [0,1]
(bytes / 255); the normalisation is done inside forward().

Determinism: fixed seed, torch.use_deterministic_algorithms(True), one
thread (torch, OpenMP and OpenBLAS), no data loader workers, and
PYTHONHASHSEED=0 (the script re-executes itself with these settings), so
that the weights and the scripted code, hence the .pt bytes, are reproducible
on the same CPU type and torch build. Other CPUs (other SIMD kernels) or BLAS
builds may round differently and produce slightly different weights.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fmnist_common as common  # noqa: E402

common.reexec_with_fixed_hash_seed()

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def _import_models_repo_relative():
    """Imports fmnist_models.py, naming its source "models/fmnist_models.py".

    The saved archive's debug info records each scripted function's source
    file (co_filename); Python makes imported paths absolute, which would
    make the .pt bytes depend on where the repo is checked out. So compile the
    module under its repo-relative name and put its lines in linecache, where
    inspect (used by torch.jit.script) finds them.
    """
    import linecache
    import types
    path = os.path.join(common.MODELS_DIR, "fmnist_models.py")
    rel = "models/fmnist_models.py"
    with open(path) as f:
        source = f.read()
    linecache.cache[rel] = (len(source), None, source.splitlines(True), rel)
    module = types.ModuleType("fmnist_models")
    module.__file__ = rel
    sys.modules["fmnist_models"] = module
    exec(compile(source, rel, "exec"), module.__dict__)
    return module


fmnist_models = _import_models_repo_relative()

# --------------------------------------------------------------------------
# Training.
# --------------------------------------------------------------------------

# Per-model recipe. Epoch counts were sized so that the whole run stays well
# under half an hour on one CPU thread (see README.md).
RECIPES = {
    "cnn": dict(file="fmnist_cnn.pt", epochs=5, batch=128, lr=4e-3,
                weight_decay=1e-4, opt="adam", sched="onecycle"),
    "vit": dict(file="fmnist_vit.pt", epochs=15, batch=128, lr=2e-3,
                weight_decay=0.05, opt="adamw", sched="cosine", warmup=1,
                clip=1.0),
}


def make_optimizer(model, r):
    if r["opt"] == "adam":
        return torch.optim.Adam(model.parameters(), lr=r["lr"],
                                weight_decay=r["weight_decay"])
    # AdamW without decay on biases, norms and the cls/pos embeddings.
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or n in ("cls_token", "pos_embed")
         else decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": r["weight_decay"]},
         {"params": no_decay, "weight_decay": 0.0}], lr=r["lr"])


def make_scheduler(opt, r, steps_per_epoch, epochs):
    total = steps_per_epoch * epochs
    if r["sched"] == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=r["lr"], total_steps=total)
    warm = steps_per_epoch * r.get("warmup", 0)

    def factor(step):
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train(name, x_train, y_train, x_test, y_test, seed, epochs, max_steps):
    r = RECIPES[name]
    torch.manual_seed(seed)
    model = fmnist_models.build(name)
    n_params = common.count_params(model)
    print(f"[{name}] {n_params} parameters, {epochs} epochs", flush=True)
    opt = make_optimizer(model, r)
    n = x_train.shape[0]
    steps_per_epoch = n // r["batch"]  # drop the last partial batch
    sched = make_scheduler(opt, r, steps_per_epoch, epochs)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        te = time.time()
        perm = torch.randperm(n, generator=gen)
        loss_sum = 0.0
        for step in range(steps_per_epoch):
            if max_steps and step >= max_steps:
                break
            idx = perm[step * r["batch"]:(step + 1) * r["batch"]]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if r.get("clip"):
                nn.utils.clip_grad_norm_(model.parameters(), r["clip"])
            opt.step()
            sched.step()
            loss_sum += loss.item()
        steps = min(steps_per_epoch, max_steps or steps_per_epoch)
        acc = common.accuracy(model, x_test, y_test)
        print(f"[{name}] epoch {epoch + 1}/{epochs} loss {loss_sum / steps:.4f} "
              f"test acc {acc:.4f} ({time.time() - te:.1f}s)", flush=True)
    train_s = time.time() - t0
    model.eval()
    return model, n_params, train_s


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["cnn", "vit", "all"], default="all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=None,
                    help="override the recipe's epoch count")
    ap.add_argument("--max-steps", type=int, default=0,
                    help="debug: limit steps per epoch (0: full epochs)")
    ap.add_argument("--out-dir", default=common.MODELS_DIR)
    args = ap.parse_args()
    args.out_dir = os.path.abspath(args.out_dir)

    if args.model == "all":
        # One process per model: scripting a second model in the same process
        # mangles the already-compiled nn class names (Conv2d ->
        # ___torch_mangle_N), so its .pt bytes would depend on what was
        # trained before it.
        for name in ("cnn", "vit"):
            cmd = [sys.executable, os.path.abspath(__file__), "--model", name,
                   "--seed", str(args.seed), "--max-steps", str(args.max_steps),
                   "--out-dir", args.out_dir]
            if args.epochs:
                cmd += ["--epochs", str(args.epochs)]
            subprocess.run(cmd, check=True)
        return

    torch.set_num_threads(common.NUM_THREADS)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False

    x_train, y_train = common.load_split("train")
    x_test, y_test = common.load_split("t10k")
    print(f"train {tuple(x_train.shape)}, test {tuple(x_test.shape)}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"PYTHONHASHSEED={os.environ.get('PYTHONHASHSEED')}", flush=True)

    os.makedirs(args.out_dir, exist_ok=True)
    ref_path = os.path.join(args.out_dir, "reference.json")
    reference = {}
    if os.path.exists(ref_path):
        with open(ref_path) as f:
            reference = json.load(f)

    name = args.model
    r = RECIPES[name]
    epochs = args.epochs or r["epochs"]
    model, n_params, train_s = train(name, x_train, y_train, x_test,
                                     y_test, args.seed, epochs,
                                     args.max_steps)
    path = os.path.join(args.out_dir, r["file"])
    torch.jit.save(torch.jit.script(model), path)
    # Measure the accuracy of what was saved, not of the in-memory model.
    loaded = torch.jit.load(path, map_location="cpu")
    acc = common.accuracy(loaded, x_test, y_test)
    entry = {
        "params": n_params,
        "test_accuracy": acc,
        "seed": args.seed,
        "epochs": epochs,
        "sha256": common.sha256_file(path),
    }
    reference[r["file"]] = entry
    print(f"[{name}] saved {path} ({os.path.getsize(path)} bytes): "
          f"test acc {acc:.4f}, train {train_s:.1f}s "
          f"({train_s / epochs:.1f}s/epoch)", flush=True)
    with open(ref_path, "w") as f:
        json.dump(dict(sorted(reference.items())), f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
