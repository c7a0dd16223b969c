#!/usr/bin/env python3
"""Writes untrained torchvision models as TorchScript for bench_hessian.

Usage: /usr/bin/python3 bench/make_torchvision_models.py [OUT_DIR]
(default bench/out/, git-ignored). Nothing is downloaded (weights=None);
weights come from a fixed seed, models are in eval mode and scripted.
Writes resnet18.pt, mobilenet_v2.pt, vit_b_16.pt (num_classes=10; inputs
float32 [N, 3, 224, 224]).
"""
import os
import sys

import torch
import torchvision


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "out")
    os.makedirs(out_dir, exist_ok=True)
    builders = {
        "resnet18": torchvision.models.resnet18,
        "mobilenet_v2": torchvision.models.mobilenet_v2,
        "vit_b_16": torchvision.models.vit_b_16,
    }
    for name, build in builders.items():
        path = os.path.join(out_dir, name + ".pt")
        torch.manual_seed(0)
        model = build(weights=None, num_classes=10).eval()
        scripted = torch.jit.script(model)
        with torch.no_grad():
            out = scripted(torch.zeros(1, 3, 224, 224))
        assert tuple(out.shape) == (1, 10), out.shape
        scripted.save(path)
        params = sum(p.numel() for p in model.parameters())
        print(f"{path}: {params} parameters")


if __name__ == "__main__":
    main()
