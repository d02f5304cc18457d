"""Canonical Huffman coding of small-alphabet symbol streams, and LEB128 varints.

The entropy coder of the packed `.tfc` format (`tfcompress.export.tfc`).  A
stream is written as:

    varint A            alphabet size (symbols are 0 .. A-1)
    ceil(A/2) bytes     each symbol's code length in 4 bits (low nibble first; 0 = unused)
    varint nbits        length of the bit stream
    ceil(nbits/8) bytes the codes, most significant bit first, zero-padded

Codes are canonical (assigned in order of length, then symbol), so the
lengths alone define them.  Lengths are limited to 15 bits.  A stream with
one distinct symbol gets a 1-bit code.  The symbol count is not stored:
the caller knows it.

Reference: Huffman, "A Method for the Construction of Minimum-Redundancy
Codes", Proc. IRE 1952; Deep Compression (Han et al., arXiv:1510.00149,
Sec. 4) Huffman-codes its quantized weights and sparse offsets.
"""

import heapq
import numpy as np

from tfcompress.errors import TfcError

MAX_CODE_LENGTH = 15


class Reader:
    """A cursor over bytes; every read past the end raises TfcError."""

    def __init__(self, data: bytes, source: str):
        self.data, self.pos, self.source = data, 0, source

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise TfcError(f"{self.source} is truncated or corrupt (read past the end)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def varint(self) -> int:
        value = shift = 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
            if shift > 63:
                raise TfcError(f"{self.source} is corrupt (an integer field runs on)")


def varint(value: int) -> bytes:
    """Unsigned LEB128."""
    if value < 0:
        raise ValueError("varint of a negative number")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code length per symbol (0 for symbols that never occur), at most MAX_CODE_LENGTH."""
    counts = np.asarray(counts, np.int64)
    used = np.flatnonzero(counts)
    lengths = np.zeros(len(counts), np.int64)
    if len(used) == 1:
        lengths[used] = 1
        return lengths
    weights = counts.copy()
    while True:
        # Ties broken by node id, so the same counts always give the same code.
        heap = [(int(weights[s]), i) for i, s in enumerate(used)]
        heapq.heapify(heap)
        parent = [-1] * len(used)
        while len(heap) > 1:
            w1, a = heapq.heappop(heap)
            w2, b = heapq.heappop(heap)
            parent.append(-1)
            parent[a] = parent[b] = len(parent) - 1
            heapq.heappush(heap, (w1 + w2, len(parent) - 1))
        depth = [0] * len(parent)
        for node in range(len(parent) - 2, -1, -1):  # Parents are created after their children.
            depth[node] = depth[parent[node]] + 1
        if max(depth[:len(used)]) <= MAX_CODE_LENGTH:
            lengths[used] = depth[:len(used)]
            return lengths
        weights = np.where(weights > 0, np.maximum(weights // 2, 1), 0)  # Flatten until the depth fits.


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical code (an integer, read MSB first over its length) of each symbol."""
    codes = np.zeros(len(lengths), np.int64)
    code = 0
    previous = 0
    for s in sorted((int(s) for s in np.flatnonzero(lengths)), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[s]) - previous
        codes[s] = code
        previous = int(lengths[s])
        code += 1
    return codes


def encode(symbols: np.ndarray, alphabet: int) -> bytes:
    """The stream format above for `symbols` (ints in [0, alphabet))."""
    symbols = np.asarray(symbols, np.int64).reshape(-1)
    if symbols.size and (symbols.min() < 0 or symbols.max() >= alphabet):
        raise ValueError("symbol outside the alphabet")
    lengths = code_lengths(np.bincount(symbols, minlength=alphabet)) if symbols.size else np.zeros(alphabet, np.int64)
    codes = canonical_codes(lengths)
    nibbles = np.zeros(alphabet + (alphabet % 2), np.uint8)
    nibbles[:alphabet] = lengths
    table = (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8).tobytes()
    sym_len, sym_code = lengths[symbols], codes[symbols]
    starts = np.concatenate([[0], np.cumsum(sym_len)[:-1]]) if symbols.size else np.zeros(0, np.int64)
    nbits = int(sym_len.sum())
    bits = np.zeros(nbits, np.uint8)
    for j in range(MAX_CODE_LENGTH):
        has = sym_len > j
        bits[starts[has] + j] = (sym_code[has] >> (sym_len[has] - 1 - j)) & 1
    return varint(alphabet) + table + varint(nbits) + np.packbits(bits).tobytes()


def decode(reader: Reader, count: int) -> np.ndarray:
    """Reads one stream written by `encode` and returns its `count` symbols."""
    alphabet = reader.varint()
    if alphabet > 1 << 16:
        raise TfcError(f"{reader.source} is corrupt (alphabet of {alphabet} symbols)")
    table = np.frombuffer(reader.take((alphabet + 1) // 2), np.uint8)
    lengths = np.stack([table & 0x0F, table >> 4], axis=1).reshape(-1)[:alphabet].astype(np.int64)
    nbits = reader.varint()
    bits = np.unpackbits(np.frombuffer(reader.take((nbits + 7) // 8), np.uint8))[:nbits]
    if count == 0:
        return np.zeros(0, np.int64)
    if count > nbits:  # Every code is at least one bit long: a stream this short cannot hold that many symbols.
        raise TfcError(f"{reader.source} is corrupt (a code stream of {nbits} bits for {count} symbols)")
    if not lengths.any():
        raise TfcError(f"{reader.source} is corrupt (an empty code for {count} symbols)")
    # Lookup table on the next MAX_CODE_LENGTH bits: (symbol, length) for every prefix.
    codes = canonical_codes(lengths)
    lookup_symbol = np.full(1 << MAX_CODE_LENGTH, -1, np.int64)
    lookup_length = np.zeros(1 << MAX_CODE_LENGTH, np.int64)
    for s in np.flatnonzero(lengths):
        shift = MAX_CODE_LENGTH - int(lengths[s])
        lo = int(codes[s]) << shift
        lookup_symbol[lo:lo + (1 << shift)] = s
        lookup_length[lo:lo + (1 << shift)] = lengths[s]
    padded = np.concatenate([bits, np.zeros(MAX_CODE_LENGTH, np.uint8)]).astype(np.int64)
    windows = np.zeros(nbits + 1, np.int64)
    for j in range(MAX_CODE_LENGTH):
        windows = (windows << 1) | padded[j:j + nbits + 1]
    out = np.empty(count, np.int64)
    sym_table, len_table = lookup_symbol.tolist(), lookup_length.tolist()
    window_list = windows.tolist()
    pos = 0
    for i in range(count):
        if pos >= nbits:
            raise TfcError(f"{reader.source} is corrupt (a code stream ends early)")
        w = window_list[pos]
        s = sym_table[w]
        if s < 0:
            raise TfcError(f"{reader.source} is corrupt (an invalid code)")
        out[i] = s
        pos += len_table[w]
    if pos != nbits:
        raise TfcError(f"{reader.source} is corrupt (a code stream has {nbits - pos} bits left over)")
    return out


def stream_size(symbols: np.ndarray, alphabet: int) -> int:
    """Bytes `encode` would write, without encoding (for choosing between encodings)."""
    counts = np.bincount(np.asarray(symbols, np.int64), minlength=alphabet)
    lengths = code_lengths(counts) if counts.any() else np.zeros(alphabet, np.int64)
    nbits = int((counts * lengths).sum())
    return len(varint(alphabet)) + (alphabet + 1) // 2 + len(varint(nbits)) + (nbits + 7) // 8
