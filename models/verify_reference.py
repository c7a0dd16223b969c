#!/usr/bin/python3
"""Checks the committed reference models against models/reference.json.

    /usr/bin/python3 models/verify_reference.py [--no-sha] [--json]

For every entry of reference.json: reloads the TorchScript file with
torch.jit.load, recomputes the top-1 accuracy on the 10k Fashion-MNIST test
set (same batching and thread count as train_reference.py), and checks that
it equals the recorded test_accuracy to 1e-4, that the parameter count
matches, and (unless --no-sha) that the file's sha256 matches.
Exit status 0 when everything matches, 1 otherwise.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fmnist_common as common  # noqa: E402

for _k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_k, common.FIXED_ENV[_k])

import torch  # noqa: E402

# One test image out of 10k (a prediction flipped by different rounding on
# another CPU) is tolerated; the slack absorbs float error in the difference.
TOLERANCE = 1e-4 + 1e-9


def verify(models_dir, check_sha=True, only=None):
    with open(os.path.join(models_dir, "reference.json")) as f:
        reference = json.load(f)
    torch.set_num_threads(common.NUM_THREADS)
    x_test, y_test = common.load_split("t10k")
    results = {}
    for name, ref in sorted(reference.items()):
        if only and name not in only:
            continue
        path = os.path.join(models_dir, name)
        res = {"ok": True, "errors": []}
        if not os.path.exists(path):
            res.update(ok=False, errors=[f"{path} is missing"])
            results[name] = res
            continue
        if check_sha:
            sha = common.sha256_file(path)
            if sha != ref["sha256"]:
                res["errors"].append(f"sha256 {sha} != {ref['sha256']}")
        model = torch.jit.load(path, map_location="cpu")
        params = common.count_params(model)
        if params != ref["params"]:
            res["errors"].append(f"params {params} != {ref['params']}")
        acc = common.accuracy(model, x_test, y_test)
        res["test_accuracy"] = acc
        if abs(acc - ref["test_accuracy"]) > TOLERANCE:
            res["errors"].append(
                f"test accuracy {acc:.4f} != {ref['test_accuracy']:.4f}")
        res["ok"] = not res["errors"]
        results[name] = res
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models-dir", default=common.MODELS_DIR)
    ap.add_argument("--no-sha", action="store_true",
                    help="skip the sha256 check (e.g. for retrained files)")
    ap.add_argument("--json", action="store_true", help="print JSON results")
    ap.add_argument("only", nargs="*", help="model files to check (default all)")
    args = ap.parse_args()
    results = verify(args.models_dir, not args.no_sha, set(args.only) or None)
    if args.only and set(args.only) - set(results):
        missing = sorted(set(args.only) - set(results))
        print(f"not in reference.json: {', '.join(missing)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(results, indent=2, sort_keys=True))
    else:
        for name, res in results.items():
            acc = res.get("test_accuracy")
            acc_s = f"{acc:.4f}" if acc is not None else "n/a"
            status = "OK" if res["ok"] else "FAIL: " + "; ".join(res["errors"])
            print(f"{name}: test accuracy {acc_s} {status}")
    return 0 if results and all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
