#!/usr/bin/python3
"""Trains the reference text models on Fashion-MNIST token sequences.

    /usr/bin/python3 models/train_text.py                # both models
    /usr/bin/python3 models/train_text.py --model gpt    # one, merged into
                                                         # text_reference.json
    /usr/bin/python3 models/train_text.py --data OUTDIR [--train-n N]
        [--test-n N]     # only write the token datasets (safetensors)
    /usr/bin/python3 models/train_text.py --verify [--no-sha]

Writes models/fmnist_bert.pt and models/fmnist_gpt.pt (torch.jit.script,
eval mode) and models/text_reference.json: parameters, seed, epochs, sha256,
and the figures measured on the saved file reloaded with torch.jit.load:
  fmnist_bert.pt: test_accuracy (top-1 on the 10k test sequences) and
    test_accuracy_first_1000 (the first 1,000);
  fmnist_gpt.pt: test_perplexity, exp of the mean next-token cross-entropy
    over the 49 predicted tokens of every test sequence (positions 1..49
    given 0..48), and test_perplexity_first_1000.
The token rule is in text_models.py (16 intensity levels of 4x4 patches
after a BOS token: int64 [N, 50], vocabulary 17).

--data writes, for the engine (QUANTIZE calibration/eval data):
  fmnist_tokens_{train,test}_cls.safetensors  "inputs" int64 [N, 50],
                                              "targets" int64 [N] (classes)
  fmnist_tokens_{train,test}_lm.safetensors   "inputs" only (a language
                                              model's targets are its inputs)
with the first --train-n training and --test-n test images (0 = all).

--verify reloads the committed files and checks the figures in
text_reference.json to 1e-4 relative (and the sha256 unless --no-sha).

Determinism as train_reference.py: seed 0, deterministic algorithms, one
thread, PYTHONHASHSEED=0 (re-exec), each model trained and scripted in its
own process, the model classes compiled under their repo-relative name.
"""

import argparse
import json
import linecache
import math
import os
import struct
import subprocess
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fmnist_common as common  # noqa: E402

common.reexec_with_fixed_hash_seed()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def _import_models_repo_relative():
    """Imports text_models.py under the name "models/text_models.py" (see
    train_reference.py: the archive's debug info records source paths)."""
    path = os.path.join(common.MODELS_DIR, "text_models.py")
    rel = "models/text_models.py"
    with open(path) as f:
        source = f.read()
    linecache.cache[rel] = (len(source), None, source.splitlines(True), rel)
    module = types.ModuleType("text_models")
    module.__file__ = rel
    sys.modules["text_models"] = module
    exec(compile(source, rel, "exec"), module.__dict__)
    return module


tm = _import_models_repo_relative()

REFERENCE_JSON = os.path.join(common.MODELS_DIR, "text_reference.json")
SUBSET = 1000  # the *_first_1000 figures (what the ctest checks)

# Sized so that both models train in about 15 minutes on one CPU thread.
RECIPES = {
    "bert": dict(file="fmnist_bert.pt", dim=64, depth=2, heads=4, epochs=4,
                 batch=128, lr=2e-3, weight_decay=0.05, warmup=200, clip=1.0),
    "gpt": dict(file="fmnist_gpt.pt", dim=64, depth=2, heads=4, epochs=2,
                batch=128, lr=2e-3, weight_decay=0.05, warmup=200, clip=1.0),
}


def load_tokens(split):
    """(tokens int64 [N, 50], labels int64 [N]) of a Fashion-MNIST split."""
    images = common._read_idx(
        os.path.join(common.FMNIST_DIR, f"{split}-images-idx3-ubyte.gz"))
    labels = common._read_idx(
        os.path.join(common.FMNIST_DIR, f"{split}-labels-idx1-ubyte.gz"))
    tokens = tm.tokenize(torch.from_numpy(images.copy()))
    return tokens, torch.from_numpy(labels.astype(np.int64))


def write_safetensors(path, tensors):
    """int64 tensors in the safetensors format, by hand: u64 LE header size,
    JSON header (padded to 8 bytes), little-endian data."""
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        data = t.contiguous().numpy().astype("<i8").tobytes()
        header[name] = {"dtype": "I64", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def write_data(out_dir, train_n, test_n):
    os.makedirs(out_dir, exist_ok=True)
    for split, name, n in (("train", "train", train_n), ("t10k", "test", test_n)):
        tokens, labels = load_tokens(split)
        if n:
            tokens, labels = tokens[:n], labels[:n]
        write_safetensors(os.path.join(out_dir, f"fmnist_tokens_{name}_cls.safetensors"),
                          {"inputs": tokens, "targets": labels})
        write_safetensors(os.path.join(out_dir, f"fmnist_tokens_{name}_lm.safetensors"),
                          {"inputs": tokens})
        print(f"{out_dir}: {name} {tuple(tokens.shape)}")


def lm_loss_sum(logits, tokens):
    """Summed next-token cross-entropy: logits[:, :-1] against tokens[:, 1:]."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                           tokens[:, 1:].reshape(-1), reduction="sum")


@torch.no_grad()
def evaluate(name, model, tokens, labels, batch=common.EVAL_BATCH):
    """Top-1 accuracy (bert) or perplexity (gpt) in fixed-size batches."""
    model.eval()
    total = 0.0
    for i in range(0, tokens.shape[0], batch):
        x = tokens[i:i + batch]
        out = model(x)
        if name == "bert":
            total += int((out.argmax(1) == labels[i:i + batch]).sum())
        else:
            total += float(lm_loss_sum(out.double(), x))
    if name == "bert":
        return total / tokens.shape[0]
    return math.exp(total / (tokens.shape[0] * (tokens.shape[1] - 1)))


def make_optimizer(model, r):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or n.startswith("pos") else decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": r["weight_decay"]},
         {"params": no_decay, "weight_decay": 0.0}], lr=r["lr"])


def train(name, tokens, labels, test, seed, epochs):
    r = RECIPES[name]
    torch.manual_seed(seed)
    model = tm.build(name, r["dim"], r["depth"], r["heads"])
    n_params = common.count_params(model)
    print(f"[{name}] {n_params} parameters, {epochs} epochs", flush=True)
    opt = make_optimizer(model, r)
    n = tokens.shape[0]
    steps_per_epoch = n // r["batch"]  # drop the last partial batch
    total, warm = steps_per_epoch * epochs, r["warmup"]

    def factor(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        te = time.time()
        perm = torch.randperm(n, generator=gen)
        loss_sum = 0.0
        for step in range(steps_per_epoch):
            idx = perm[step * r["batch"]:(step + 1) * r["batch"]]
            x = tokens[idx]
            out = model(x)
            if name == "bert":
                loss = F.cross_entropy(out, labels[idx])
            else:
                loss = lm_loss_sum(out, x) / (x.shape[0] * (x.shape[1] - 1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), r["clip"])
            opt.step()
            sched.step()
            loss_sum += loss.item()
        figure = evaluate(name, model, test[0][:SUBSET], test[1][:SUBSET])
        print(f"[{name}] epoch {epoch + 1}/{epochs} loss {loss_sum / steps_per_epoch:.4f} "
              f"test[:{SUBSET}] {figure:.4f} ({time.time() - te:.1f}s)", flush=True)
    model.eval()
    return model, n_params, time.time() - t0


def figures(name, model, test):
    key = "test_accuracy" if name == "bert" else "test_perplexity"
    return {key: evaluate(name, model, *test),
            f"{key}_first_{SUBSET}": evaluate(name, model, test[0][:SUBSET],
                                              test[1][:SUBSET])}


def train_one(args):
    torch.set_num_threads(common.NUM_THREADS)
    torch.use_deterministic_algorithms(True)
    train_set, test = load_tokens("train"), load_tokens("t10k")
    print(f"train {tuple(train_set[0].shape)}, test {tuple(test[0].shape)}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"PYTHONHASHSEED={os.environ.get('PYTHONHASHSEED')}", flush=True)
    name, r = args.model, RECIPES[args.model]
    epochs = args.epochs or r["epochs"]
    model, n_params, train_s = train(name, *train_set, test, args.seed, epochs)
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, r["file"])
    torch.jit.save(torch.jit.script(model), path)
    # The figures of what was saved, not of the in-memory model.
    entry = {"params": n_params, "seed": args.seed, "epochs": epochs,
             "dim": r["dim"], "depth": r["depth"], "heads": r["heads"],
             "train_seconds": round(train_s, 1)}
    entry.update(figures(name, torch.jit.load(path, map_location="cpu"), test))
    entry["sha256"] = common.sha256_file(path)
    ref_path = os.path.join(args.out_dir, "text_reference.json")
    reference = {}
    if os.path.exists(ref_path):
        with open(ref_path) as f:
            reference = json.load(f)
    reference[r["file"]] = entry
    print(f"[{name}] saved {path} ({os.path.getsize(path)} bytes): {entry}", flush=True)
    with open(ref_path, "w") as f:
        json.dump(dict(sorted(reference.items())), f, indent=2)
        f.write("\n")


def verify(models_dir, check_sha):
    torch.set_num_threads(common.NUM_THREADS)
    with open(os.path.join(models_dir, "text_reference.json")) as f:
        reference = json.load(f)
    test = load_tokens("t10k")
    ok = True
    for file, ref in sorted(reference.items()):
        name = "bert" if "bert" in file else "gpt"
        path = os.path.join(models_dir, file)
        errors = []
        if check_sha and common.sha256_file(path) != ref["sha256"]:
            errors.append("sha256 differs")
        model = torch.jit.load(path, map_location="cpu")
        if common.count_params(model) != ref["params"]:
            errors.append(f"params {common.count_params(model)} != {ref['params']}")
        for key, value in figures(name, model, test).items():
            if abs(value - ref[key]) > 1e-4 * abs(ref[key]):
                errors.append(f"{key} {value:.6f} != {ref[key]:.6f}")
        print(f"{file}: {'OK' if not errors else '; '.join(errors)}")
        ok = ok and not errors
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["bert", "gpt", "all"], default="all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--out-dir", default=common.MODELS_DIR)
    ap.add_argument("--data", metavar="OUTDIR", help="only write the datasets")
    ap.add_argument("--train-n", type=int, default=0)
    ap.add_argument("--test-n", type=int, default=0)
    ap.add_argument("--verify", action="store_true")
    ap.add_argument("--no-sha", action="store_true")
    args = ap.parse_args()
    args.out_dir = os.path.abspath(args.out_dir)
    if args.data:
        return write_data(args.data, args.train_n, args.test_n)
    if args.verify:
        return verify(args.out_dir, not args.no_sha)
    if args.model != "all":
        return train_one(args)
    # One process per model: scripting a second model in the same process
    # mangles the compiled class names (see train_reference.py).
    for name in ("bert", "gpt"):
        cmd = [sys.executable, os.path.abspath(__file__), "--model", name,
               "--seed", str(args.seed), "--out-dir", args.out_dir]
        if args.epochs:
            cmd += ["--epochs", str(args.epochs)]
        subprocess.run(cmd, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
