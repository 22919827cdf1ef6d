#!/usr/bin/env python3
"""Seed corpora for the libFuzzer targets in fuzz/ (nothing here is committed but this script).

    python3 fuzz/make_corpus.py OUT_DIR [GOLDEN_DIR]

Writes OUT_DIR/<target>/seed-*: valid files (from the golden folder, or generated here),
truncated and bit-flipped variants. Deterministic (fixed random seed); well under 2 MB in all.
"""
import json
import os
import random
import struct
import sys
import zlib

rng = random.Random(1234)


def variants(data, n_cut=3, n_flip=4):
    """The data, a few truncations, and a few copies with random bit flips."""
    out = [data]
    for k in range(1, n_cut + 1):
        out.append(data[: len(data) * k // (n_cut + 1)])
    for _ in range(n_flip):
        b = bytearray(data)
        for _ in range(1 + len(b) // 512):
            if b:
                i = rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8)
        out.append(bytes(b))
    return out


def write(out_dir, target, items):
    d = os.path.join(out_dir, target)
    os.makedirs(d, exist_ok=True)
    for i, data in enumerate(items):
        with open(os.path.join(d, "seed-%03d" % i), "wb") as f:
            f.write(data)


# ------------------------------------------------------------------ safetensors
DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
          "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


def safetensors(entries, metadata=None, align=8):
    header, blob = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape in entries:
        n = DTYPES[dtype]
        for s in shape:
            n *= s
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + n]}
        blob += bytes(rng.randrange(256) for _ in range(n))
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % align)
    return struct.pack("<Q", len(h)) + h + blob


def safetensors_seeds(golden):
    seeds = []
    seeds += variants(safetensors([(d.lower(), d, [2, 3]) for d in DTYPES], {"format": "pt"}))
    seeds += variants(safetensors([("scalar", "F32", []), ("empty", "F16", [0, 4])]))
    seeds.append(safetensors([("odd", "F32", [3])], align=1))  # unaligned data
    seeds.append(b"\x10\x00\x00\x00\x00\x00\x00\x00{}              ")
    seeds.append(b"\xff" * 8 + b"{}")  # absurd header length
    path = os.path.join(golden, "cases", "rng_probe.safetensors")
    if os.path.exists(path):
        with open(path, "rb") as f:
            seeds += variants(f.read())
    return seeds


# ------------------------------------------------------------------ configs
def config_seeds(golden):
    seeds = []
    for root, _, files in sorted(os.walk(os.path.join(golden, "models"))) + sorted(
            os.walk(os.path.join(golden, "full-configs"))):
        for name in sorted(files):
            if name.endswith(".json") and name != "vocab.json":
                with open(os.path.join(root, name), "rb") as f:
                    seeds += variants(f.read(), n_cut=1, n_flip=1)
    index = {"metadata": {"total_size": 123},
             "weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                            "b.weight": "model-00002-of-00002.safetensors"}}
    seeds += variants(json.dumps(index).encode())
    seeds.append(b'{"weight_map": {"a": "../escape.safetensors"}}')
    seeds.append(b'{"hidden_size": 1e300, "num_hidden_layers": 16.0, "_class_name": "UVit2DModel"}')
    seeds.append(b"[" * 200 + b"]" * 200)
    return seeds


# ------------------------------------------------------------------ tokenizer
SEP = b"\n#~~~#\n"


def tokenizer_seeds(golden):
    seeds = []
    manifest = os.path.join(golden, "manifest.json")
    prompts = ["a photo of a cat", "<|startoftext|>x<|endoftext|>", "caf\u00e9 \u6771\u4eac"]
    if os.path.exists(manifest):
        with open(manifest) as f:
            for case in json.load(f)["cases"]:
                if case.get("kind") == "tokenizer":
                    prompts += [p["prompt"] for p in case.get("prompts", [])]
    prompts = sorted(set(prompts))
    for i, p in enumerate(prompts):
        seeds.append(bytes([0 if i % 2 else 2]) + p.encode("utf-8"))
    seeds.append(b"\x02" + b"\xff\xfe\xc3(\xe2\x82" + "\u0301\u200d\U0001F600".encode())
    # A tokenizer folder: a cut-down vocabulary and merges from the golden tokenizer.
    tok = os.path.join(golden, "models", "tiny-a", "tokenizer")
    if os.path.exists(os.path.join(tok, "vocab.json")):
        with open(os.path.join(tok, "vocab.json"), encoding="utf-8") as f:
            vocab = json.load(f)
        with open(os.path.join(tok, "merges.txt"), encoding="utf-8") as f:
            merges = f.read().split("\n")[:120]
        keep = {k: v for k, v in vocab.items() if v < 300 or k in ("<|startoftext|>", "<|endoftext|>")}
        parts = [json.dumps(keep).encode(), "\n".join(merges).encode()]
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            with open(os.path.join(tok, name), "rb") as f:
                parts.append(f.read())
        folder = SEP.join(parts)
        seeds += [b"\x01" + v for v in variants(folder, n_cut=2, n_flip=3)]
    seeds.append(b"\x01" + SEP.join([b'{"a": 0, "b": 2147483647}', b"#version\na b",
                                     b'{"added_tokens_decoder": {"2147483647": "x"}}', b"{}"]))
    return seeds


# ------------------------------------------------------------------ images
def png(width, height, color_type, bit_depth, rows, palette=None):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth,
                                                         color_type, 0, 0, 0))
    if palette:
        out += chunk(b"PLTE", palette)
    out += chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + r for r in rows)))
    return out + chunk(b"IEND", b"")


def bmp(width, height):
    row = bytes(rng.randrange(256) for _ in range(width * 3))
    row += b"\x00" * (-len(row) % 4)
    pixels = row * height
    header = b"BM" + struct.pack("<IHHI", 54 + len(pixels), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    return header + info + pixels


def image_seeds(golden):
    seeds = []
    rnd = lambda n: bytes(rng.randrange(256) for _ in range(n))
    seeds += variants(png(5, 4, 2, 8, [rnd(15) for _ in range(4)]))  # RGB
    seeds += variants(png(3, 3, 6, 8, [rnd(12) for _ in range(3)]), n_cut=1, n_flip=2)  # RGBA
    seeds += variants(png(4, 2, 0, 1, [rnd(1) for _ in range(2)]), n_cut=1, n_flip=2)  # 1-bit grey
    seeds += variants(png(2, 2, 4, 16, [rnd(8) for _ in range(2)]), n_cut=1, n_flip=2)  # grey+a 16
    seeds += variants(png(3, 2, 3, 8, [bytes([0, 1, 2]), bytes([2, 1, 0])], palette=rnd(9)),
                      n_cut=1, n_flip=2)  # palette
    seeds.append(png(100000, 100000, 2, 8, []))  # claims 10 gigapixels
    seeds += variants(bmp(3, 2))
    # JPEGs: Python's own test images (baseline and progressive), else a header-only stub.
    import glob
    jpegs = sorted(glob.glob(os.path.join(sys.prefix, "lib", "python3*", "test", "**", "*.jpg"),
                             recursive=True))
    jpegs = [j for j in jpegs if os.path.getsize(j) < 64 << 10][:2]
    for cand in jpegs:
        with open(cand, "rb") as f:
            seeds += variants(f.read(), n_cut=2, n_flip=2)
    seeds.append(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9")
    return seeds


# ------------------------------------------------------------------ server requests
def server_request_seeds():
    """Byte 0: endpoint (0 generations, 1 edits, 2 jobs) + 4 for a multipart form; then the body
    (fuzz_server_request.cpp describes the multipart encoding)."""
    import base64
    rnd = lambda n: bytes(rng.randrange(256) for _ in range(n))
    image = png(16, 16, 2, 8, [rnd(48) for _ in range(16)])
    mask = png(16, 16, 0, 8, [bytes([255 if x > 7 else 0 for x in range(16)]) for _ in range(16)])
    b64 = lambda b: base64.b64encode(b).decode()
    full = {"prompt": "a red fox", "negative_prompt": "blurry", "n": 2, "size": "256x256",
            "response_format": "b64_json", "model": "amused-256", "user": "u", "steps": 12,
            "guidance_scale": 10.0, "seed": 42, "temperature": [2, 0], "aesthetic_score": 6,
            "crop_coord": [0, 0], "masking_schedule": "cosine"}
    edit = {"prompt": "a cat", "image": b64(image), "mask": "data:image/png;base64," + b64(mask),
            "strength": 0.7, "steps": 4, "temperature": 1.5}
    bodies = [
        (0, json.dumps({"prompt": "a photo of an astronaut"})),
        (0, json.dumps(full)),
        (2, json.dumps(full)),
        (1, json.dumps(edit)),
        (2, json.dumps(edit)),
        (1, json.dumps({"prompt": "x", "image": b64(image)})),
        (0, '{"prompt": "caf\u00e9", "size": "auto", "seed": 18446744073709551615}'),
        (0, '{"prompt": "x", "n": 1e400, "steps": -1, "unknown": true}'),
        (0, '[1, 2, 3]'),
        (0, '{"prompt": "x", "temperature": "2,0", "crop_coord": [1.5, 2]}'),
    ]
    seeds = []
    for kind, body in bodies:
        seeds += variants(bytes([kind]) + body.encode(), n_cut=1, n_flip=1)

    def form(parts):
        return b"\n--part--\n".join(
            name + b"\n" + filename + b"\n" + ctype + b"\n" + content
            for name, filename, ctype, content in parts)
    forms = [
        (4 + 1, [(b"prompt", b"", b"", b"a red fox"), (b"image", b"in.png", b"image/png", image),
                 (b"mask", b"mask.png", b"image/png", mask), (b"n", b"", b"", b"2"),
                 (b"strength", b"", b"", b"0.5"), (b"size", b"", b"", b"256x256")]),
        (4 + 2, [(b"prompt", b"", b"", b"x"), (b"seed", b"", b"", b"-3"),
                 (b"steps", b"", b"", b"12"), (b"temperature", b"", b"", b"2,0")]),
        (4 + 0, [(b"prompt", b"", b"", b"x"), (b"prompt", b"", b"", b"y")]),
        (4 + 1, [(b"prompt", b"", b"", b"caf\xc3\xa9"), (b"image", b"\xff.png", b"", image)]),
    ]
    for kind, parts in forms:
        seeds += variants(bytes([kind]) + form(parts), n_cut=1, n_flip=2)
    return seeds


# ------------------------------------------------------------------ raw HTTP (fuzz_http.cpp)
def http_seeds():
    """Whole requests as sent on the wire (first byte 0: no prefix), and bodies after the
    prefixes fuzz_http.cpp adds (1: generations, 2: edits, 3: jobs headers; 4: a job path; 5: GET /)."""
    key = b"Authorization: Bearer fuzz-key\r\n"
    gen = json.dumps({"prompt": "a red fox", "steps": 2, "seed": 3}).encode()

    def post(path, body, ctype=b"application/json", extra=b""):
        return (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n" + key + b"Content-Type: " + ctype +
                b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)
    image = png(16, 16, 2, 8, [bytes(range(48))] * 16)
    boundary = b"XyZ"
    form = b"".join(b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"" + n + b"\"" +
                    (b"; filename=\"" + f + b"\"" if f else b"") + b"\r\n\r\n" + v + b"\r\n"
                    for n, f, v in [(b"prompt", b"", b"a cat"), (b"image", b"in.png", image),
                                    (b"steps", b"", b"2")]) + b"--" + boundary + b"--\r\n"
    chunked = (b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n" + key +
               b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" +
               b"%x\r\n" % len(gen) + gen + b"\r\n0\r\n\r\n")
    whole = [
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + key + b"\r\n",
        b"GET /metrics?format=json HTTP/1.1\r\nHost: x\r\n" + key + b"\r\n",
        post(b"/v1/images/generations", gen),
        post(b"/v1/jobs", gen),
        post(b"/v1/images/edits", form, b"multipart/form-data; boundary=" + boundary),
        chunked,
        post(b"/v1/images/generations", gen, extra=b"Expect: 100-continue\r\n"),
        post(b"/v1/images/generations", gen, extra=b"Content-Length: 3\r\n"),
        b"OPTIONS /v1/images/generations HTTP/1.1\r\nHost: x\r\nOrigin: http://a\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/jobs HTTP/1.1\r\nHost: x\r\n" + key + b"\r\n",
        b"DELETE /v1/jobs/abc HTTP/1.1\r\nHost: x\r\n" + key + b"\r\n",
    ]
    seeds = []
    for w in whole:
        seeds += variants(b"\x00" + w, n_cut=2, n_flip=2)
    after = [(1, b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(gen) + gen),
             (3, b"Content-Length: 2\r\n\r\n{}"),
             (4, b"abc/result HTTP/1.1\r\nHost: x\r\n" + key + b"\r\n"),
             (5, b"v1/models/tiny-a HTTP/1.1\r\nHost: x\r\n" + key + b"\r\n")]
    for kind, rest in after:
        seeds += variants(bytes([kind]) + rest, n_cut=1, n_flip=2)
    return seeds


def main():
    out = sys.argv[1]
    golden = sys.argv[2] if len(sys.argv) > 2 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "golden")
    write(out, "safetensors", safetensors_seeds(golden))
    write(out, "config", config_seeds(golden))
    write(out, "tokenizer", tokenizer_seeds(golden))
    write(out, "image", image_seeds(golden))
    write(out, "server_request", server_request_seeds())
    write(out, "http", http_seeds())


if __name__ == "__main__":
    main()
