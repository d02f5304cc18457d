"""The packed `.tfc` format: a TFLite flatbuffer with its weight buffers stored as Deep Compression stores them.

`pack(tflite)` keeps every byte of the flatbuffer; `unpack` gives back exactly
the same bytes (checked against a SHA-256 of the original), so the `.tfc`
and the `.tflite` are two forms of one deployable model.

Each weight buffer (a constant tensor of type int8, uint8, int16, int32,
int64, float16 or float32; its elements taken as bit patterns, so a zero is
an all-zero element) is stored as:
- a codebook: the buffer's distinct values (its distinct nonzero values when
  the zeros are stored as positions);
- the codebook index of every stored element, Huffman-coded;
- when sparse: the positions of the nonzero elements as relative offsets
  (the number of zeros before each nonzero element, in the buffer's
  row-major order), where a gap of 2^b - 1 or more is written as that many
  filler symbols (each meaning "2^b - 1 more zeros, continue") and the
  remainder, with b from 1 to 8 chosen per buffer; Huffman-coded.
Whichever of dense, sparse or left-in-place is smallest is used per buffer.
Everything else (the flatbuffer's tables, names, quantization parameters,
metadata, and buffers left in place) is the *skeleton*: the file with the
packed byte ranges cut out, compressed as a raw LZMA2 stream (preset 9e).

Layout (integers are unsigned LEB128 varints unless sized; see
`tfcompress.export.entropy` for the Huffman stream):

    "TFCP" u8 version=1
    varint tflite_size, 32 bytes SHA-256 of the .tflite
    varint buffer_count
    per buffer:
      varint offset, varint length     (its data's byte range in the .tflite)
      u8 dtype                         (TFLite TensorType: 0 f32, 1 f16, 2 i32, 3 u8, 4 i64, 7 i16, 9 i8)
      u8 mode                          (0 dense, 1 sparse)
      varint codebook_size, then codebook_size values (little-endian, dtype's width)
      mode 1: u8 b, varint nonzero_count, varint gap_symbol_count, Huffman(gap symbols, alphabet 2^b)
      Huffman(codebook indices, alphabet codebook_size)  (one per stored element)
    varint skeleton_length (compressed), the skeleton

Reference: Han, Mao & Dally, "Deep Compression", arXiv:1510.00149 (Sec. 2:
relative-index sparse storage with filler zeros; Sec. 4: Huffman coding).
"""

import dataclasses
import hashlib
import lzma
from typing import Dict, List, Optional, Tuple

import numpy as np

from tfcompress.errors import TfcError
from tfcompress.export import entropy
from tfcompress.export.flatbuffer import TENSOR_DTYPES, TFLITE_IDENTIFIER, parse, schema_module

MAGIC = b"TFCP"
VERSION = 1
DENSE, SPARSE = 0, 1
# Buffers with more distinct values than this stay in the skeleton (a codebook that large saves nothing).
MAX_CODEBOOK = 4096
# The largest .tflite a .tfc file may declare, as a multiple of the .tfc's own size, and in absolute terms (a
# flatbuffer is limited to 2 GiB).  Trained models pack 3-70x; only a model that is almost all zeros packs more,
# and `pack` refuses that rather than write a file whose size says nothing about what it unpacks to.
MAX_EXPANSION = 4096
MAX_TFLITE_BYTES = 2 << 30


_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]


def element_dtype(dtype: int) -> np.dtype:
    """Elements are handled as little-endian unsigned integers of the tensor type's width.

    Comparing bit patterns rather than numbers keeps every byte: -0.0 is not
    a zero position, and NaN payloads survive.
    """
    return np.dtype(f"<u{np.dtype(TENSOR_DTYPES[dtype]).itemsize}")


def _compress(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)


def _decompress(data: bytes, source: str, expected: int) -> bytes:
    """The skeleton, decompressing no more than one byte past the `expected` size."""
    try:
        decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
        out = decompressor.decompress(data, max_length=expected + 1)
    except lzma.LZMAError as e:
        raise TfcError(f"{source} is corrupt (its skeleton does not decompress: {e})") from e
    if len(out) > expected or not decompressor.eof:
        raise TfcError(f"{source} is corrupt (its skeleton is not the {expected} bytes it should be)")
    return out


def weight_buffers(tflite: bytes, source: str = "the .tflite") -> List[Tuple[int, int, int]]:
    """(offset, length, TFLite dtype) of every constant tensor's data inside the flatbuffer, by offset."""
    parse(tflite, source)  # Validates the file first.
    schema = schema_module()
    root = schema.Model.GetRootAsModel(tflite, 0)
    dtype_of: Dict[int, int] = {}
    for g in range(root.SubgraphsLength()):
        subgraph = root.Subgraphs(g)
        for t in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(t)
            if tensor.Buffer() > 0 and tensor.Type() in TENSOR_DTYPES:
                dtype_of.setdefault(tensor.Buffer(), tensor.Type())
    found = []
    for index, dtype in dtype_of.items():
        table = root.Buffers(index)._tab  # pylint: disable=protected-access
        field = table.Offset(4)  # Buffer.data, the table's first field.
        if not field:
            continue
        start, length = table.Vector(field), table.VectorLen(field)
        if length and length % np.dtype(TENSOR_DTYPES[dtype]).itemsize == 0:
            found.append((start, length, dtype))
    return sorted(found)


@dataclasses.dataclass(frozen=True)
class PackedBuffer:
    offset: int
    length: int
    mode: str          # dense | sparse
    codebook: int
    stored: int        # bytes in the .tfc


@dataclasses.dataclass(frozen=True)
class PackResult:
    data: bytes
    buffers: List[PackedBuffer]
    skeleton: int      # compressed skeleton bytes
    left_in_place: int  # weight buffers kept in the skeleton (smaller that way)


def _gap_symbols(positions: np.ndarray, bits: int) -> np.ndarray:
    filler = (1 << bits) - 1
    gaps = np.diff(np.concatenate([[-1], positions])) - 1
    fillers = gaps // filler
    out = np.full(int(fillers.sum() + len(gaps)), filler, np.int64)
    ends = np.cumsum(fillers + 1) - 1  # Each gap's remainder follows its fillers.
    out[ends] = gaps % filler
    return out


def _encode_buffer(values: np.ndarray, dtype: int) -> Optional[Tuple[bytes, str, int]]:
    """(encoded bytes after the offset/length fields, mode, codebook size) of the smallest encoding, or None."""
    candidates = []
    for mode in (DENSE, SPARSE):
        stored = values if mode == DENSE else values[values != 0]
        if mode == SPARSE and stored.size == values.size:
            continue
        codebook, indices = np.unique(stored, return_inverse=True)
        if len(codebook) > MAX_CODEBOOK:
            continue
        head = bytes([dtype, mode]) + entropy.varint(len(codebook)) + codebook.tobytes()
        if mode == SPARSE:
            positions = np.flatnonzero(values != 0)
            bits = min(range(1, 9), key=lambda b: (entropy.stream_size(_gap_symbols(positions, b), 1 << b), b))
            symbols = _gap_symbols(positions, bits)
            head += (bytes([bits]) + entropy.varint(len(positions)) + entropy.varint(len(symbols))
                     + entropy.encode(symbols, 1 << bits))
        body = head + entropy.encode(indices, max(len(codebook), 1))
        candidates.append((len(body), mode, body, len(codebook)))
    if not candidates:
        return None
    _, mode, body, codebook = min(candidates, key=lambda c: (c[0], c[1]))
    return body, ("dense" if mode == DENSE else "sparse"), codebook


def pack(tflite: bytes, source: str = "the .tflite") -> PackResult:
    """The `.tfc` bytes of a TFLite flatbuffer (see the module docstring); `source` names it in errors."""
    buffers = weight_buffers(tflite, source)
    chosen, bodies, cut = [], [], []
    left = 0
    for offset, length, dtype in buffers:
        element = element_dtype(dtype)
        encoded = _encode_buffer(np.frombuffer(tflite, element, length // element.itemsize, offset), dtype)
        # Left in place when LZMA inside the skeleton does at least as well.
        if encoded is None or len(encoded[0]) >= len(_compress(tflite[offset:offset + length])):
            left += 1
            continue
        body, mode, codebook = encoded
        entry = entropy.varint(offset) + entropy.varint(length) + body
        bodies.append(entry)
        chosen.append(PackedBuffer(offset, length, mode, codebook, len(entry)))
        cut.append((offset, length))
    pieces, pos = [], 0
    for offset, length in cut:
        pieces.append(tflite[pos:offset])
        pos = offset + length
    pieces.append(tflite[pos:])
    skeleton = _compress(b"".join(pieces))
    data = (MAGIC + bytes([VERSION]) + entropy.varint(len(tflite)) + hashlib.sha256(tflite).digest()
            + entropy.varint(len(bodies)) + b"".join(bodies) + entropy.varint(len(skeleton)) + skeleton)
    if len(tflite) > MAX_EXPANSION * len(data):
        raise TfcError(f"the .tflite packs {len(tflite) / len(data):.0f}x, more than a .tfc may declare "
                       f"({MAX_EXPANSION}x): it is almost all zeros; keep it as a .tflite")
    if unpack(data, "the packed data") != tflite:  # Cannot happen; never write a file that does not unpack.
        raise TfcError("internal error: the packed data does not unpack to the .tflite")
    return PackResult(data, chosen, len(skeleton), left)


def unpack(data: bytes, source: str = "the .tfc file") -> bytes:
    """The original `.tflite` bytes of a `.tfc` file.

    Raises:
      TfcError: not a .tfc file, an unknown version, truncated or corrupt
        content, or a result whose SHA-256 differs from the one recorded.
    """
    if data[:4] != MAGIC:
        raise TfcError(f"{source} is not a .tfc file (no TFCP magic)")
    reader = entropy.Reader(data, source)
    reader.take(4)
    version = reader.take(1)[0]
    if version != VERSION:
        raise TfcError(f"{source} has .tfc version {version}; this tfcompress reads version {VERSION}")
    size = reader.varint()
    if size > min(MAX_EXPANSION * len(data), MAX_TFLITE_BYTES):
        raise TfcError(f"{source} is corrupt (it declares a {size}-byte .tflite, more than a {len(data)}-byte "
                       f".tfc can hold)")
    digest = reader.take(32)
    pieces = []
    declared = 0  # Bytes of buffers so far: with the skeleton, they must make up `size`.
    for _ in range(reader.varint()):
        offset, length = reader.varint(), reader.varint()
        declared += length
        if declared > size:
            raise TfcError(f"{source} is corrupt (its buffers add up to more than the .tflite)")
        dtype, mode = reader.take(1)[0], reader.take(1)[0]
        if dtype not in TENSOR_DTYPES or mode not in (DENSE, SPARSE):
            raise TfcError(f"{source} is corrupt (buffer type {dtype}, mode {mode})")
        np_dtype = element_dtype(dtype)
        if length % np_dtype.itemsize or offset + length > size:
            raise TfcError(f"{source} is corrupt (a buffer of {length} bytes at {offset})")
        count = length // np_dtype.itemsize
        k = reader.varint()
        if k > MAX_CODEBOOK:
            raise TfcError(f"{source} is corrupt (a codebook of {k} values)")
        codebook = np.frombuffer(reader.take(k * np_dtype.itemsize), np_dtype)
        positions = None  # Dense: every element, in order.
        if mode == SPARSE:
            bits = reader.take(1)[0]
            nonzero = reader.varint()
            if not 1 <= bits <= 8 or nonzero > count:
                raise TfcError(f"{source} is corrupt (sparse buffer header)")
            symbols = entropy.decode(reader, reader.varint())
            positions = np.cumsum(_gaps(symbols, nonzero, (1 << bits) - 1, source) + 1) - 1
            if nonzero and positions[-1] >= count:
                raise TfcError(f"{source} is corrupt (a nonzero position past the buffer)")
            stored = nonzero
        else:
            stored = count
        # Decoded before anything of the buffer's size is allocated: the stream's bits bound `stored`.
        indices = entropy.decode(reader, stored)
        if stored and (k == 0 or indices.max() >= k):
            raise TfcError(f"{source} is corrupt (a codebook index out of range)")
        pieces.append((offset, length, np_dtype, positions, codebook[indices] if stored else None))
    skeleton = _decompress(reader.take(reader.varint()), source, size - declared)
    if len(skeleton) != size - declared:
        raise TfcError(f"{source} is corrupt (its skeleton and buffers do not make up the .tflite)")
    if reader.pos != len(data):
        raise TfcError(f"{source} is corrupt ({len(data) - reader.pos} trailing bytes)")
    # Only now, with every size consistent, is the .tflite allocated (zeros) and filled.
    out, pos, end = bytearray(size), 0, 0
    for offset, length, np_dtype, positions, values in sorted(pieces, key=lambda p: p[0]):
        if offset < end:
            raise TfcError(f"{source} is corrupt (overlapping buffers)")
        out[end:offset] = skeleton[pos:pos + offset - end]
        pos += offset - end
        if values is not None:
            view = np.frombuffer(out, np_dtype, length // np_dtype.itemsize, offset)
            if positions is None:
                view[:] = values
            else:
                view[positions] = values
            del view  # A live view would pin the bytearray's size.
        end = offset + length
    out[end:] = skeleton[pos:]
    out = bytes(out)
    if len(out) != size or hashlib.sha256(out).digest() != digest:
        raise TfcError(f"{source} is corrupt (the unpacked flatbuffer does not match its recorded SHA-256)")
    if out[4:8] != TFLITE_IDENTIFIER:
        raise TfcError(f"{source} does not hold a TFLite flatbuffer")
    return out


def _gaps(symbols: np.ndarray, nonzero: int, filler: int, source: str) -> np.ndarray:
    """The number of zeros before each of `nonzero` elements, from filler-coded gap symbols."""
    is_filler = symbols == filler
    if int(np.sum(~is_filler)) != nonzero or (len(symbols) and is_filler[-1]):
        raise TfcError(f"{source} is corrupt (sparse offsets do not match the nonzero count)")
    # Each remainder adds the fillers since the previous remainder.
    fillers_before = np.cumsum(is_filler)[~is_filler]
    runs = np.diff(np.concatenate([[0], fillers_before]))
    return runs * filler + symbols[~is_filler]
