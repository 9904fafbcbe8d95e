#!/usr/bin/env python3
"""safetensors interop (ctest safetensors_python): files distill writes open in NumPy/PyTorch,
and files Python writes load into distill.

Reads and writes the format by hand, from its specification (u64 little-endian header length,
JSON header, data buffer), so the test needs only NumPy (torch too when installed, for the
conversion users do); the `safetensors` package, when installed, reads distill's files as well.
Usage: safetensors_interop.py <path of safetensors_tool>
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "U8": np.uint8, "F16": np.float16}


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def read_safetensors(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    meta = header.pop("__metadata__", {})
    spans = sorted((info["data_offsets"], name) for name, info in header.items())
    at = 0
    for (begin, end), _ in spans:  # the spec: offsets tile the data buffer
        assert begin == at and end >= begin, spans
        at = end
    assert at == len(data)
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        arr = np.frombuffer(data[begin:end], dtype=np.dtype(DTYPES[info["dtype"]]).newbyteorder("<"))
        tensors[name] = arr.reshape(info["shape"])
    # distill's checksum: FNV-1a 64 of the file with its own 16 hex digits read as '0'
    digits = meta["distill.checksum"].split(":")[1]
    at = raw.index(digits.encode(), 8, 8 + n)
    zeroed = raw[:at] + b"0" * 16 + raw[at + 16:]
    assert fnv1a64(zeroed) == int(digits, 16), "checksum"
    return tensors, meta


def write_safetensors(path, tensors, metadata):
    header, offset, blobs = {"__metadata__": metadata}, 0, []
    for name, arr in tensors.items():
        blob = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
        dtype = {np.float32: "F32", np.float64: "F64", np.int64: "I64", np.uint8: "U8"}[arr.dtype.type]
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header).encode()  # Python's spelling: spaces, \u escapes
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def main():
    tool = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        # distill -> Python
        subprocess.run([tool, "write", tmp], check=True)
        ck, meta = read_safetensors(os.path.join(tmp, "checkpoint.safetensors"))
        assert meta["distill.content"] == "checkpoint" and meta["distill.format_version"] == "1"
        np.testing.assert_array_equal(ck["param/w"], (0.5 * np.arange(12) - 1).astype(np.float32).reshape(3, 4))
        np.testing.assert_array_equal(ck["param/b"], 1.0 / np.arange(1, 5))
        assert ck["optim/step"].tolist() == [42] and bytes(ck["meta/name"]) == b"distill"
        q, qmeta = read_safetensors(os.path.join(tmp, "queue.safetensors"))
        assert qmeta["distill.content"] == "sample_queue"
        assert (qmeta["write_position"], qmeta["fill_count"]) == ("2", "4")
        rows = {slot: r for r in range(6) for slot in [r % 4]}  # the last row written to each slot
        want = np.array([[rows[s], rows[s] + 0.5, -rows[s]] for s in range(4)], dtype=np.float32)
        np.testing.assert_array_equal(q["keys"], want)
        assert q["ids"].tolist() == [100 + rows[s] for s in range(4)]
        try:
            import torch
            assert torch.from_numpy(ck["param/w"].copy()).shape == (3, 4)
        except ImportError:
            pass
        try:
            from safetensors.numpy import load_file
            np.testing.assert_array_equal(load_file(os.path.join(tmp, "queue.safetensors"))["keys"], want)
        except ImportError:
            print("note: the safetensors package is not installed; read with the hand-written reader only")

        # Python -> distill
        rng = np.random.default_rng(7)
        mine = {
            "param/conv.weight": rng.standard_normal((2, 3, 3, 3)).astype(np.float32),
            "param/b\u00e9": rng.standard_normal(5),
            "optim/step": np.array([9], dtype=np.int64),
            "meta/tag": np.frombuffer(b"py", dtype=np.uint8),
        }
        path = os.path.join(tmp, "from_python.safetensors")
        write_safetensors(path, mine, {"format": "pt"})
        out = subprocess.run([tool, "read", path], check=True, capture_output=True, text=True).stdout
        seen = {}
        for line in out.splitlines():
            head, values = line.split(" : ") if " : " in line else (line.rstrip(" :"), "")
            name, dtype, *shape = head.split(" ")
            parse = float.fromhex if dtype in ("F32", "F64") else int
            seen[name] = (dtype, [int(s) for s in shape], [parse(v) for v in values.split()])
        assert set(seen) == set(mine), (seen.keys(), mine.keys())
        for name, arr in mine.items():
            dtype, shape, values = seen[name]
            assert shape == list(arr.shape), name
            assert values == arr.ravel().tolist(), name  # bit-exact
    print("safetensors interop: ok")


if __name__ == "__main__":
    main()
