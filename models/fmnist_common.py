"""Shared helpers for the Fashion-MNIST reference models (see README.md).

Used by train_reference.py and verify_reference.py. Only the Python standard
library, numpy and torch are needed; the data comes from the Debian package
dataset-fashion-mnist (IDX files), never from the network.
"""

import gzip
import hashlib
import os
import struct
import sys

import numpy as np
import torch

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
MODELS_DIR = os.path.dirname(os.path.abspath(__file__))
REFERENCE_JSON = os.path.join(MODELS_DIR, "reference.json")

# Evaluation settings shared by the training script and the verifier, so that
# both compute the accuracy the same way (same batching, same thread count).
EVAL_BATCH = 100
# One thread: on a shared 2-core box, two OpenMP threads spin-waiting against
# other jobs were 5-10x slower per step than one, and a single thread also
# makes the floating-point reduction order independent of the machine's cores.
NUM_THREADS = 1

# Environment fixed by reexec_with_fixed_hash_seed() before torch is imported
# (OpenBLAS reads its thread count when the library loads).
FIXED_ENV = {
    "PYTHONHASHSEED": "0",
    "OMP_NUM_THREADS": str(NUM_THREADS),
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def reexec_with_fixed_hash_seed():
    """Re-executes the interpreter with FIXED_ENV unless already set.

    torch.jit.script output (the code/ files inside the saved archive) depends
    on the iteration order of Python sets/dicts of strings, which depends on
    the string hash seed; fixing it makes the .pt bytes reproducible. The
    thread counts are fixed too (see NUM_THREADS).
    """
    if any(os.environ.get(k) != v for k, v in FIXED_ENV.items()):
        env = dict(os.environ, **FIXED_ENV)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable] + sys.argv, env)


def _read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {dims}, got {arr.size} bytes")
    return arr.reshape(dims)


def load_split(split, data_dir=FMNIST_DIR):
    """Returns (images float32 [N,1,28,28] in [0,1], labels int64 [N]).

    Same convention as the service's builtin dataset loader (bytes / 255).
    split is "train" (60k) or "t10k" (10k test).
    """
    images = _read_idx(os.path.join(data_dir, f"{split}-images-idx3-ubyte.gz"))
    labels = _read_idx(os.path.join(data_dir, f"{split}-labels-idx1-ubyte.gz"))
    x = torch.from_numpy(images.copy()).to(torch.float32).div_(255.0)
    x = x.unsqueeze(1).contiguous()
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


@torch.no_grad()
def accuracy(model, x, y, batch=EVAL_BATCH):
    """Top-1 accuracy of model on (x, y), evaluated in fixed-size batches."""
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch):
        logits = model(x[i:i + batch])
        correct += int((logits.argmax(dim=1) == y[i:i + batch]).sum())
    return correct / x.shape[0]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def count_params(model):
    return sum(p.numel() for p in model.parameters())
