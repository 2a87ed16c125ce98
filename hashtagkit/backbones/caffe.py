"""Reading Caffe's binary `.caffemodel` without Caffe, and mapping VGG-16 onto torchvision.

The public Places365 VGG-16 exists only as a Caffe model, so `vgg16-scene` needs this. A
caffemodel is a protobuf `NetParameter`; we decode the protobuf wire format directly (a few
dozen lines) instead of depending on Caffe or on a compiled caffe.proto. Fields used, from
caffe.proto:

    NetParameter      layer = 100 (LayerParameter), layers = 2 (V1LayerParameter, legacy)
    LayerParameter    name = 1, type = 2 (string), blobs = 7
    V1LayerParameter  name = 4, type = 5 (enum), blobs = 6
    BlobProto         num = 1, channels = 2, height = 3, width = 4 (legacy 4-D shape),
                      data = 5 (float), shape = 7 (BlobShape: dim = 1), double_data = 8

Blob 0 of a layer is its weight, blob 1 its bias. Caffe and PyTorch agree on the layouts that
matter: conv weights are (out, in, kh, kw), and pool5 flattens channel-major, so fc6 needs no
permutation. The colour order (BGR) stays in the weights; the backbone's preprocessing feeds BGR.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hashtagkit.errors import InputError

VGG16_CONV = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
              "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3")
VGG16_CONV_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # in torchvision's vgg16.features
VGG16_FC = {"fc6": "classifier.0", "fc7": "classifier.3"}


@dataclass
class CaffeLayer:
    name: str
    type: str
    blobs: list[np.ndarray] = field(default_factory=list)


class ProtobufError(ValueError):
    pass


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtobufError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise ProtobufError("varint too long")


def _fields(buf: memoryview):
    """Yield (field number, wire type, value) of one message; value is an int or a memoryview."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise ProtobufError("message runs past the end of the file")
        yield number, wire, value


def _packed_varints(value) -> list[int]:
    if isinstance(value, int):
        return [value]
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(v)
    return out


def _blob(buf: memoryview) -> np.ndarray:
    legacy = {1: 0, 2: 0, 3: 0, 4: 0}
    dims: list[int] = []
    floats: list[np.ndarray] = []
    doubles: list[np.ndarray] = []
    for number, wire, value in _fields(buf):
        if number in legacy and wire == 0:
            legacy[number] = value
        elif number == 5:  # packed (wire 2) or one float at a time (wire 5)
            floats.append(np.frombuffer(value, dtype="<f4"))
        elif number == 8:
            doubles.append(np.frombuffer(value, dtype="<f8"))
        elif number == 7:
            for n, _, v in _fields(value):
                if n == 1:
                    dims += _packed_varints(v)
    data = np.concatenate(floats) if floats else (np.concatenate(doubles).astype(np.float32) if doubles else np.zeros(0, np.float32))
    if dims:
        shape = tuple(dims)
    else:  # legacy num/channels/height/width: drop the leading 1s Caffe padded vectors and matrices with
        shape = tuple(legacy[k] for k in (1, 2, 3, 4))
        while len(shape) > 1 and shape[0] == 1 and int(np.prod(shape[1:])) == data.size:
            shape = shape[1:]
    if int(np.prod(shape)) != data.size:
        raise ProtobufError(f"blob shape {shape} does not match its {data.size} values")
    return data.reshape(shape).astype(np.float32, copy=True)


def read_caffemodel(path: str | Path) -> list[CaffeLayer]:
    """Every layer of a caffemodel with its blobs (layers without blobs included, empty)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    buf = memoryview(path.read_bytes())
    layers = []
    try:
        for number, wire, value in _fields(buf):
            if wire != 2 or number not in (2, 100):
                continue
            name_field, type_field, blob_field = (1, 2, 7) if number == 100 else (4, 5, 6)
            layer = CaffeLayer(name="", type="")
            for n, w, v in _fields(value):
                if n == name_field and w == 2:
                    layer.name = bytes(v).decode("utf-8", "replace")
                elif n == type_field:
                    layer.type = bytes(v).decode("utf-8", "replace") if w == 2 else f"V1:{v}"
                elif n == blob_field and w == 2:
                    layer.blobs.append(_blob(v))
            layers.append(layer)
    except ProtobufError as e:
        raise InputError(f"{path} is not a readable caffemodel: {e}") from None
    if not layers:
        raise InputError(f"{path} has no layers: not a caffemodel (NetParameter)")
    return layers


def raw_state_dict(layers: list[CaffeLayer]) -> dict[str, np.ndarray]:
    """`<layer>.weight` / `<layer>.bias` for every layer with blobs (extra blobs `.blob<i>`)."""
    state = {}
    for layer in layers:
        for i, blob in enumerate(layer.blobs):
            suffix = {0: "weight", 1: "bias"}.get(i, f"blob{i}")
            state[f"{layer.name}.{suffix}"] = blob
    return state


def vgg16_state_dict(layers: list[CaffeLayer], keep_fc8: bool = False) -> dict[str, np.ndarray]:
    """Map Caffe VGG-16 layer names (conv1_1 .. conv5_3, fc6, fc7, fc8*) onto torchvision's
    vgg16 state dict; fc8 (fc8a in Places365: 365 classes) only if asked for."""
    by_name = {layer.name: layer for layer in layers if layer.blobs}
    targets = dict(zip(VGG16_CONV, (f"features.{i}" for i in VGG16_CONV_INDEX), strict=True)) | VGG16_FC
    if keep_fc8:
        fc8 = [n for n in by_name if n.startswith("fc8")]
        if len(fc8) != 1:
            raise InputError(f"{{opt:keep_fc8}}: expected one fc8 layer, found {fc8 or 'none'}")
        targets[fc8[0]] = "classifier.6"
    missing = [n for n in targets if n not in by_name]
    if missing:
        raise InputError(f"not a VGG-16 caffemodel: layers {', '.join(missing[:4])} missing (has {', '.join(list(by_name)[:6])} ...)")
    expected_in = {"fc6": 512 * 7 * 7, "fc7": 4096}
    state = {}
    for caffe_name, torch_name in targets.items():
        weight, bias = by_name[caffe_name].blobs[:2]
        if torch_name.startswith("classifier"):
            weight = weight.reshape(weight.shape[0] if weight.ndim == 2 else bias.size, -1)
            if caffe_name in expected_in and weight.shape != (4096, expected_in[caffe_name]):
                raise InputError(f"{caffe_name} has shape {weight.shape}, VGG-16 needs (4096, {expected_in[caffe_name]})")
        elif weight.ndim != 4:
            raise InputError(f"{caffe_name} weight has shape {weight.shape}, a convolution needs 4 dims")
        state[f"{torch_name}.weight"] = weight
        state[f"{torch_name}.bias"] = bias.reshape(-1)
    return state


def write_blob(weights: np.ndarray, legacy: bool = False) -> bytes:
    """Encode one BlobProto (used by the tests to make caffemodels from known weights, and
    small enough to keep next to the reader it mirrors)."""
    data = np.ascontiguousarray(weights, dtype="<f4").tobytes()
    out = bytearray()
    if legacy:
        dims = (1,) * (4 - weights.ndim) + tuple(weights.shape)
        for number, d in zip((1, 2, 3, 4), dims, strict=True):
            out += _key(number, 0) + _enc_varint(d)
    else:
        shape = b"".join(_enc_varint(d) for d in weights.shape)
        inner = _key(1, 2) + _enc_varint(len(shape)) + shape
        out += _key(7, 2) + _enc_varint(len(inner)) + inner
    out += _key(5, 2) + _enc_varint(len(data)) + data
    return bytes(out)


def write_caffemodel(path: str | Path, layers: list[CaffeLayer], legacy: bool = False) -> None:
    """Write a NetParameter with `layer` (or legacy `layers`) entries holding the given blobs."""
    with open(path, "wb") as f:
        f.write(_key(1, 2) + _enc_bytes(b"net"))
        for layer in layers:
            if legacy:
                body = _key(4, 2) + _enc_bytes(layer.name.encode()) + _key(5, 0) + _enc_varint(4)
                body += b"".join(_key(6, 2) + _enc_bytes(write_blob(b, legacy=True)) for b in layer.blobs)
                f.write(_key(2, 2) + _enc_bytes(body))
            else:
                body = _key(1, 2) + _enc_bytes(layer.name.encode()) + _key(2, 2) + _enc_bytes(layer.type.encode())
                body += b"".join(_key(7, 2) + _enc_bytes(write_blob(b)) for b in layer.blobs)
                f.write(_key(100, 2) + _enc_bytes(body))


def _enc_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _enc_varint((number << 3) | wire)


def _enc_bytes(data: bytes) -> bytes:
    return _enc_varint(len(data)) + data


@dataclass
class Converted:
    """What `convert_caffemodel` wrote: the weights file, its tensors and parameters, its sha256."""

    path: Path
    tensors: int
    parameters: int
    arch: str
    block: str
    preprocessing: str
    sha256: str


def convert_caffemodel(model: str | Path, out: str | Path, *, arch: str = "vgg16", keep_fc8: bool = False,
                       preprocessing: str | None = None, block: str | None = None,
                       overwrite: bool = False) -> Converted:
    """A Caffe .caffemodel as a PyTorch weights file, without Caffe: the state dict (`arch`
    vgg16: torchvision's VGG-16 names, checked by loading it; raw: `<layer>.weight/.bias` for
    any net) and what it expects (the `preprocessing` and `block` it was trained for, the
    caffemodel's name and sha256), so `extract` refuses to feed it other pixels."""
    import torch

    from hashtagkit import provenance
    from hashtagkit.backbones import PREPROCESSINGS, weights_file_payload
    from hashtagkit.outputs import atomic_file, refuse_existing

    model, out = Path(model), Path(out)
    if arch not in ("vgg16", "raw"):
        raise InputError(f"{{param}} must be vgg16 or raw, got {arch!r}", param="arch")
    refuse_existing(out, overwrite, kind="weights", inputs=[model])
    layers = read_caffemodel(model)
    state = vgg16_state_dict(layers, keep_fc8) if arch == "vgg16" else raw_state_dict(layers)
    if arch == "vgg16":
        from hashtagkit.backbones.vgg import vgg16_fc7

        try:
            vgg16_fc7({k: torch.from_numpy(v) for k, v in state.items()})
        except RuntimeError as e:
            raise InputError(f"{model}: converted weights do not fit torchvision's vgg16: "
                             f"{str(e).splitlines()[0]}") from None
    preprocessing = preprocessing or ("places365-caffe" if arch == "vgg16" else "none")
    block = block or ("scene" if arch == "vgg16" else "none")
    metadata = {
        "arch": arch, "block": None if block == "none" else block,
        "preprocessing": PREPROCESSINGS[preprocessing].describe() if preprocessing != "none" else None,
        "source": {"caffemodel": model.name, "sha256": provenance.sha256_file(model)}, "keep_fc8": keep_fc8,
        "created": provenance.now(),
    }
    with atomic_file(out) as tmp:
        torch.save(weights_file_payload({k: torch.from_numpy(v) for k, v in state.items()}, metadata), tmp)
    return Converted(out, len(state), int(sum(v.size for v in state.values())), arch, block, preprocessing,
                     provenance.sha256_file(out))
