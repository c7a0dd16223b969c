"""Writes the reference models at initialisation (bench/out/fmnist_*_init.pt).

The same architectures as models/fmnist_cnn.pt and models/fmnist_vit.pt, with
the weights the training script starts from: torch.manual_seed(0) then
fmnist_models.build(name) (PyTorch's default init; the ViT's truncated-normal
init is in its constructor), scripted in eval mode (BatchNorm running
statistics at their initial 0 and 1). For the bulk/outlier comparison of
trained and initial Hessian spectra (README "Bulk and outliers").

    /usr/bin/python3 bench/make_init_models.py [--out-dir bench/out]
"""
import argparse
import importlib.util
import os

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", default=os.path.join(HERE, "out"))
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location(
        "fmnist_models", os.path.join(HERE, "..", "models", "fmnist_models.py"))
    models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models)
    os.makedirs(args.out_dir, exist_ok=True)
    for name in ("cnn", "vit"):
        torch.manual_seed(0)
        model = models.build(name).eval()
        path = os.path.join(args.out_dir, f"fmnist_{name}_init.pt")
        torch.jit.save(torch.jit.script(model), path)
        print(path, sum(p.numel() for p in model.parameters()), "parameters")


if __name__ == "__main__":
    main()
