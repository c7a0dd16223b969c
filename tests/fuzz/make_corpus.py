#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/).

Seeds are small valid inputs (and a few near misses) that reach deep into
each reader: the dataset fixtures of tests/fixtures, hand-built safetensors,
IDX and packed-model files, SubmitJobRequests encoded by protoc from text,
and upload streams. Run from anywhere: python3 tests/fuzz/make_corpus.py
(needs protoc). Inputs the fuzzers found (regressions) are committed next to
these as regression-*; this script leaves them alone.
"""
import gzip
import json
import os
import struct
import subprocess
import hashlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
CORPUS = os.path.join(HERE, "corpus")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def fixture(name):
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read()


def safetensors(tensors, metadata=None, pad=True):
    """tensors: [(name, dtype, shape, bytes)] -> a safetensors file."""
    header, offset, data = {}, 0, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def f32(*values):
    return struct.pack("<%df" % len(values), *values)


def i64(*values):
    return struct.pack("<%dq" % len(values), *values)


def safetensors_seeds():
    t = "safetensors_fuzzer"
    for name in ("tiny.safetensors", "mismatched_targets.safetensors",
                 "missing_inputs.safetensors"):
        put(t, name, fixture(name))
    put(t, "all_dtypes.safetensors", safetensors(
        [("a", "F64", [1], b"\0" * 8), ("b", "F32", [2], f32(1, 2)),
         ("c", "F16", [1], b"\0\0"), ("d", "BF16", [1], b"\0\0"),
         ("e", "I64", [1], i64(3)), ("f", "I32", [1], b"\0" * 4),
         ("g", "I16", [1], b"\0\0"), ("h", "I8", [1], b"\0"),
         ("i", "U8", [2, 1], b"\1\2"), ("j", "BOOL", [1], b"\1")],
        metadata={"format": "pt", "note": "seed"}))
    put(t, "empty_tensor.safetensors", safetensors(
        [("inputs", "F32", [0, 3], b"")]))
    put(t, "scalar.safetensors", safetensors([("inputs", "F32", [], f32(1))]))


def dataset_seeds():
    t = "dataset_fuzzer"
    for name in ("tiny.safetensors", "mismatched_targets.safetensors",
                 "missing_inputs.safetensors", "tiny_torchsave.pt",
                 "plain_pickle.pkl", "not_a_model.zip"):
        put(t, name, fixture(name))
    put(t, "inputs_targets.safetensors", safetensors(
        [("inputs", "F32", [3, 2], f32(1, 2, 3, 4, 5, 6)),
         ("targets", "I64", [3], i64(0, 1, 2))]))
    put(t, "scalar_inputs.safetensors", safetensors(
        [("inputs", "F32", [], f32(1))]))


def idx(dims, data, type_byte=8):
    return (bytes([0, 0, type_byte, len(dims)]) +
            b"".join(struct.pack(">I", d) for d in dims) + bytes(data))


def idx_seeds():
    t = "idx_fuzzer"
    images = idx([3, 4, 4], range(48))
    labels = idx([3], [0, 7, 9])
    put(t, "images.idx", images)
    put(t, "labels.idx", labels)
    put(t, "images.idx.gz", gzip.compress(images, mtime=0))
    put(t, "labels.idx.gz", gzip.compress(labels, mtime=0))
    put(t, "truncated.idx", idx([3, 4, 4], range(20)))


def packed_model(layers, floats):
    """layers: {name: (spec dict, codes, bits, scale floats, scale_shape,
    zero_points)}; floats: [(name, dtype, shape, bytes)]."""
    manifest = {"format": "compressd.packed", "format_version": 1,
                "packing": "lsb_first_bitstream",
                "dequantize": "scale * (code - zero_point)",
                "layers": {}, "float_tensors": []}
    tensors = []
    for name, (spec, codes, scale, scale_shape, zero) in layers.items():
        bits = spec["bits"]
        numel = 1
        for d in spec["shape"]:
            numel *= d
        packed = bytearray((numel * bits + 7) // 8)
        for i, c in enumerate(codes):
            bit = i * bits
            v = c << (bit % 8)
            packed[bit // 8] |= v & 0xff
            if bit % 8 + bits > 8:
                packed[bit // 8 + 1] |= v >> 8
        m = dict(spec)
        m.update({"tensor": name + ".weight", "numel": numel,
                  "packed_bytes": len(packed), "scale_shape": scale_shape})
        manifest["layers"][name] = m
        tensors += [(name + ".weight.packed", "U8", [len(packed)], bytes(packed)),
                    (name + ".weight.scale", "F32", scale_shape, f32(*scale)),
                    (name + ".weight.zero_point", "U8", scale_shape, bytes(zero))]
    for f in floats:
        tensors.append(f)
        manifest["float_tensors"].append(f[0])
    size = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2,
            "I16": 2, "U8": 1, "I8": 1, "BOOL": 1}
    tensors.sort(key=lambda e: (-size[e[1]], e[0]))
    return safetensors(tensors, metadata={
        "format": "compressd.packed", "format_version": "1",
        "manifest": json.dumps(manifest, separators=(",", ":"))})


def packed_seeds():
    t = "packed_model_fuzzer"
    channel = {"bits": 4, "symmetric": True, "granularity": "per_channel",
               "group_size": 0, "channel_axis": 0, "shape": [2, 3],
               "min_code": 1, "max_code": 15}
    put(t, "per_channel.safetensors", packed_model(
        {"fc": (channel, [1, 8, 15, 3, 9, 8], [0.5, 0.25], [2, 1], [8, 8])},
        [("fc.bias", "F32", [2], f32(0.1, -0.1))]))
    tensor = {"bits": 3, "symmetric": False, "granularity": "per_tensor",
              "group_size": 0, "channel_axis": 0, "shape": [2, 2, 1, 1],
              "min_code": 0, "max_code": 7}
    put(t, "per_tensor.safetensors", packed_model(
        {"conv": (tensor, [0, 7, 3, 5], [0.1], [1, 1], [3])}, []))
    group = {"bits": 2, "symmetric": True, "granularity": "group",
             "group_size": 32, "channel_axis": 0, "shape": [1, 64],
             "min_code": 1, "max_code": 3}
    put(t, "group.safetensors", packed_model(
        {"head": (group, [1, 2, 3, 2] * 16, [0.5, 0.5], [1, 2], [2, 2])}, []))
    put(t, "tiny.safetensors", fixture("tiny.safetensors"))


def protoc_encode(message, text):
    return subprocess.run(
        ["protoc", "--proto_path=" + os.path.join(ROOT, "proto"),
         "--encode=" + message, "compress/v1/compress.proto"],
        input=text.encode(), check=True, capture_output=True).stdout


SPECS = {
    "inspect_shape": 'spec { inspect { model_id: "m1" input_shape: [8, 1, 28, 28] } }',
    "inspect_data": 'spec { inspect { model_id: "m1" dataset_id: "builtin:fashion-mnist/test" } }',
    "analyze": '''spec { analyze { model_id: "m1" data { dataset_id: "d1" num_samples: 128 batch_size: 32 }
      loss: LOSS_KIND_CROSS_ENTROPY hvp_method: HVP_METHOD_EXACT fallback: HVP_FALLBACK_FISHER
      traces { enabled: true tolerance: 0.05 max_probes: 50 min_probes: 10 }
      eigen { enabled: true k: 2 scope: EIGEN_SCOPE_BLOCK tolerance: 0.001 max_iterations: 100 }
      density { enabled: true lanczos_steps: 30 runs: 1 grid_points: 500 sigma: 0.00001 }
      qbert { enabled: true subsets: 4 } } } device: "cpu" seed: 7''',
    "quantize": '''spec { quantize { model_id: "m1" data { dataset_id: "d1" num_samples: 256 }
      eval_dataset_id: "builtin:fashion-mnist/test"
      quantizer { asymmetric: true granularity: GRANULARITY_GROUP group_size: 32
                  rounding: ROUNDING_GPTQ gptq_damping: 0.01 gptq_block_size: 128 }
      search: SEARCH_METHOD_PARETO budget { average_bits: 4 }
      tolerance { max_drop_pp: 1 } candidate_bits: [2, 3, 4, 8]
      pins { layer: "fc" bits: 8 } ties { layers: ["a", "b"] } omega: OMEGA_QUADRATIC
      trace_tolerance: 0.05 trace_max_probes: 20 eval_samples: 1000 } }''',
    "quantize_bops": '''spec { quantize { model_id: "m1" data { dataset_id: "d1" }
      sensitivity_job_id: "j1" search: SEARCH_METHOD_ACCURACY_BISECTION budget { bops: 1e9 }
      tolerance { max_relative_drop: 0.01 } omega: OMEGA_TRACE } }''',
    "prune": '''spec { prune { model_id: "mvit" data { dataset_id: "d1" num_samples: 512 }
      eval_dataset_id: "d2" target { flops_fraction: 0.5 } saliency: SALIENCY_HESSIAN
      latency_weight: 0.1 head_group: 1 mlp_group: 16 steps: 4
      recovery { steps: 100 learning_rate: 0.0001 temperature: 1 optimizer: "adam" }
      saliency_samples: 256 eval_samples: 1000 latency_batch: 64 min_heads: 1 min_mlp: 16 } }''',
    "compress": '''spec { compress {
      prune { model_id: "mvit" data { dataset_id: "d1" } target { params_fraction: 0.3 } }
      quantize { data { dataset_id: "d1" } budget { model_bytes: 100000 } } } }''',
    "bad_enum": 'spec { analyze { model_id: "m1" data { dataset_id: "d1" } hvp_method: 99 } }',
    "bad_double": 'spec { analyze { model_id: "m1" data { dataset_id: "d1" } density { enabled: true sigma: inf } } }',
}


def spec_seeds():
    for name, text in SPECS.items():
        put("spec_fuzzer", name + ".pb",
            protoc_encode("compress.v1.SubmitJobRequest", text))


def upload_stream(flags, messages):
    """messages: [(field, bytes)] of UploadRequest: 1 header, 2 chunk."""
    out = bytes([flags])
    for field, payload in messages:
        msg = bytes([(field << 3) | 2]) + varint(len(payload)) + payload
        out += struct.pack("<H", len(msg)) + msg
    return out


def varint(n):
    out = b""
    while True:
        b = n & 0x7f
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def header(name, size, sha):
    return (b"\x0a" + varint(len(name)) + name + b"\x10" + varint(size) +
            b"\x1a" + varint(len(sha)) + sha)


def upload_seeds():
    t = "upload_fuzzer"
    chunks = [b"hello ", b"compressd"]
    sha = hashlib.sha256(b"".join(chunks)).hexdigest().encode()
    body = [(1, header(b"m.pt", 15, sha))] + [(2, c) for c in chunks]
    put(t, "model_ok", upload_stream(0, body))
    put(t, "dataset_ok", upload_stream(1, body))
    put(t, "model_refused", upload_stream(8, body))
    put(t, "dataset_unavailable", upload_stream(1 | 16, body))
    put(t, "fixed_digest", upload_stream(2 | 4, [(1, header(b"x", 1, b"0" * 64)), (2, b"abc")]))
    put(t, "too_many_bytes", upload_stream(0, [(1, header(b"m", 3, sha)), (2, b"abcdef")]))
    put(t, "short", upload_stream(0, [(1, header(b"m", 30, sha)), (2, b"abc")]))
    put(t, "no_header", upload_stream(0, [(2, b"abc")]))
    put(t, "two_headers", upload_stream(0, body[:1] * 2))
    put(t, "bad_digest", upload_stream(0, [(1, header(b"m", 15, b"A" * 64))] + body[1:]))


def zip_seeds():
    """Real PyTorch archives (ZIP64 end records, stored members), a deflated
    one and an empty one."""
    import io
    import zipfile
    t = "zip_directory_fuzzer"
    put(t, "torchscript", fixture("tiny_mlp.pt"))
    put(t, "torchsave", fixture("tiny_torchsave.pt"))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a/data.pkl", b"x" * 4096)
        z.writestr("a/version", b"3\n")
    put(t, "deflated", out.getvalue())
    out = io.BytesIO()
    zipfile.ZipFile(out, "w").close()
    put(t, "empty", out.getvalue())


def main():
    zip_seeds()
    safetensors_seeds()
    dataset_seeds()
    idx_seeds()
    packed_seeds()
    spec_seeds()
    upload_seeds()


if __name__ == "__main__":
    main()
