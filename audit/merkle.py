"""RFC 6962 / RFC 9162 Merkle tree math: hashing, proofs, proof verification.

Pure functions over a `NodeGetter`, so that every storage backend (memory,
SQLite, PostgreSQL) shares one implementation of the tree shape. A backend
stores the hash of every *complete* subtree, addressed by `(level, index)`:
level 0 holds the leaf hashes, and node `(level, index)` covers leaves
`[index * 2**level, (index + 1) * 2**level)`. Every hash a proof needs is
either one such node or the hash of a right-edge range built from at most
log2(n) of them, so generating a proof reads O(log n) nodes, never the log.

A *compact range* of `[start, end)` is the list of perfect, aligned subtrees
that exactly cover it, left to right (`range_nodes`, `compact_range`): with the
compact range left of a slice of leaves and the one right of it, the leaves
rebuild the root of the whole tree (`Frontier` then `append_subtree`). That is
how an export proves it holds *every* leaf of its range.

Verifiers follow the numbered algorithms of RFC 9162 §2.1.3.2 and §2.1.4.2 and
fail with one error type, `ProofError`. Generators reject impossible requests
(negative index, index >= size, old > new) with `ValueError`: that is a bug in
the caller, not evidence about the log.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "Frontier",
    "MemoryTree",
    "NodeGetter",
    "ProofError",
    "compact_range",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "range_nodes",
    "reference_root",
    "root_from",
    "subtree_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32

# RFC 6962 §2.1: the hash of an empty list is the hash of an empty string.
EMPTY_ROOT = hashlib.sha256(b"").digest()

# Domain separation (RFC 6962 §2.1): a leaf can never be passed off as a node.
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

NodeGetter = Callable[[int, int], bytes]
"""`get(level, index)`: hash of the complete subtree over leaves
`[index * 2**level, (index + 1) * 2**level)`."""


class ProofError(Exception):
    """A Merkle proof, or the claim it is checked against, does not hold."""


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256(0x00 || data)."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below `n` (n >= 2): RFC 6962's `k`."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} is {len(value)} bytes, not {HASH_SIZE}")


def _check_size(value: int, what: str) -> None:
    # bool is an int; a True tree size is a bug, not size 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{what} must not be negative: {value}")


# --- the right edge -------------------------------------------------------------------


class Frontier:
    """Compact range over leaves `[0, size)`: the roots of its perfect subtrees.

    A size with binary decomposition 2**a + 2**b + ... (a > b > ...) is covered
    by one perfect subtree per set bit, largest (leftmost) first. That is all an
    appender needs to extend the tree and to compute its root, so appending
    costs O(log n) hashes and no reads.
    """

    __slots__ = ("_hashes", "size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        _check_size(size, "size")
        if len(hashes) != size.bit_count():
            raise ValueError(
                f"a frontier of size {size} has {size.bit_count()} hashes, not {len(hashes)}"
            )
        for h in hashes:
            if len(h) != HASH_SIZE:
                raise ValueError(f"frontier hash is {len(h)} bytes, not {HASH_SIZE}")
        self.size = size
        self._hashes = [bytes(h) for h in hashes]

    def __repr__(self) -> str:
        return f"Frontier(size={self.size})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frontier):
            return NotImplemented
        return self.size == other.size and self._hashes == other._hashes

    __hash__ = None  # type: ignore[assignment]  # mutable

    def hashes(self) -> list[bytes]:
        """The perfect-subtree roots, largest first (a copy)."""
        return list(self._hashes)

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Append one LEAF HASH; return every node it completes as (level, index, hash).

        The first entry is always `(0, size_before, leaf)`; one more follows for
        each trailing 1 bit of `size_before`, since each merges two equal
        perfect subtrees into one a level up.
        """
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"leaf hash is {len(leaf)} bytes, not {HASH_SIZE}")
        index = self.size
        completed = [(0, index, bytes(leaf))]
        h = bytes(leaf)
        level = 0
        while (self.size >> level) & 1:
            h = node_hash(self._hashes.pop(), h)
            level += 1
            completed.append((level, index >> level, h))
        self._hashes.append(h)
        self.size += 1
        return completed

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Append many LEAF HASHES, reporting nothing: the verifier's fast path."""
        hashes = self._hashes
        size = self.size
        for leaf in leaves:
            if len(leaf) != HASH_SIZE:
                self.size = size
                raise ValueError(f"leaf hash is {len(leaf)} bytes, not {HASH_SIZE}")
            h = bytes(leaf)
            bits = size
            while bits & 1:
                h = node_hash(hashes.pop(), h)
                bits >>= 1
            hashes.append(h)
            size += 1
        self.size = size

    def append_subtree(self, level: int, subtree: bytes) -> None:
        """Append a whole perfect subtree of `2**level` leaves, given by its hash.

        The subtree must start where the frontier ends, on a multiple of its own
        size (as every entry of `range_nodes(size, ...)` does); it merges exactly as
        its `2**level` leaves appended one by one would.
        """
        _check_size(level, "level")
        if len(subtree) != HASH_SIZE:
            raise ValueError(f"subtree hash is {len(subtree)} bytes, not {HASH_SIZE}")
        if self.size % (1 << level):
            raise ValueError(f"a level-{level} subtree cannot start at {self.size}")
        h = bytes(subtree)
        merged = level
        while (self.size >> merged) & 1:
            h = node_hash(self._hashes.pop(), h)
            merged += 1
        self._hashes.append(h)
        self.size += 1 << level

    def root(self) -> bytes:
        """RFC 6962 MTH of `[0, size)`; `EMPTY_ROOT` for an empty tree."""
        if not self._hashes:
            return EMPTY_ROOT
        # MTH nests to the right: node(c1, node(c2, ... node(c_{k-1}, c_k))).
        h = self._hashes[-1]
        for left in reversed(self._hashes[:-1]):
            h = node_hash(left, h)
        return h

    def copy(self) -> Frontier:
        return Frontier(self.size, self._hashes)

    @classmethod
    def from_nodes(cls, size: int, get: NodeGetter) -> Frontier:
        """Rebuild the frontier of `[0, size)` from stored complete nodes (popcount reads)."""
        _check_size(size, "size")
        hashes = []
        start = 0
        for level in range(size.bit_length() - 1, -1, -1):
            if (size >> level) & 1:
                hashes.append(get(level, start >> level))
                start += 1 << level
        return cls(size, hashes)


# --- hashes of ranges -------------------------------------------------------------------


def range_nodes(start: int, end: int) -> list[tuple[int, int]]:
    """The compact range of `[start, end)`: `(level, index)` of its perfect subtrees.

    Left to right, each the largest subtree aligned at its own start that still
    fits; at most two per level, so O(log n) of them. `range_nodes(0, n)` is the
    frontier of a tree of size n (one subtree per set bit, largest first).
    """
    _check_size(start, "start")
    _check_size(end, "end")
    if start > end:
        raise ValueError(f"range start {start} is past its end {end}")
    nodes = []
    while start < end:
        # The largest power of two that divides `start` (any, for 0) and fits.
        level = (start & -start).bit_length() - 1 if start else (end - start).bit_length() - 1
        while 1 << level > end - start:
            level -= 1
        nodes.append((level, start >> level))
        start += 1 << level
    return nodes


def compact_range(start: int, end: int, get: NodeGetter) -> list[bytes]:
    """The hashes of `range_nodes(start, end)`, from stored complete nodes (one read each)."""
    return [get(level, index) for level, index in range_nodes(start, end)]


def subtree_hash(start: int, end: int, get: NodeGetter) -> bytes:
    """RFC 6962 MTH of `leaves[start:end]`, built from stored complete nodes.

    Any range is accepted. The ranges proofs use start on a multiple of the
    largest power of two below their length (a perfect subtree, or the right
    edge below one), and cost at most one read per set bit of `end - start`;
    an arbitrary range is still correct but may read O(end - start) nodes.
    """
    _check_size(start, "start")
    _check_size(end, "end")
    if start > end:
        raise ValueError(f"range start {start} is past its end {end}")
    if start == end:
        return EMPTY_ROOT
    return _range_hash(start, end, get)


def _range_hash(start: int, end: int, get: NodeGetter) -> bytes:
    n = end - start
    # A perfect, aligned range is one stored node.
    if n & (n - 1) == 0 and start % n == 0:
        return get(n.bit_length() - 1, start // n)
    k = _split(n)
    return node_hash(_range_hash(start, start + k, get), _range_hash(start + k, end, get))


def root_from(size: int, get: NodeGetter) -> bytes:
    """RFC 6962 root of `[0, size)` from stored nodes; `EMPTY_ROOT` for 0."""
    return Frontier.from_nodes(size, get).root()


def reference_root(leaves: Sequence[bytes]) -> bytes:
    """RFC 6962 §2.1 MTH over LEAF HASHES, written as the RFC's recursion.

    Deliberately naive (O(n) hashes, no stored nodes): it is the oracle the
    fast paths are tested against, and enough for an offline check of a small set.
    """
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return bytes(leaves[0])
    k = _split(n)
    return node_hash(reference_root(leaves[:k]), reference_root(leaves[k:]))


# --- proof generation (RFC 6962 §2.1.1, §2.1.2) -------------------------------------


def inclusion_proof(index: int, size: int, get: NodeGetter) -> list[bytes]:
    """RFC 6962 §2.1.1 PATH(index, D[0:size]), ordered from the leaf upwards."""
    _check_size(index, "index")
    _check_size(size, "size")
    if index >= size:
        raise ValueError(f"index {index} is not in a tree of size {size}")
    # Walk down from the root; each step records the sibling range. PATH lists
    # siblings bottom-up, so the top-down walk is reversed at the end.
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            path.append(_range_hash(start + k, end, get))
            end = start + k
        else:
            path.append(_range_hash(start, start + k, get))
            start += k
    path.reverse()
    return path


def consistency_proof(old: int, new: int, get: NodeGetter) -> list[bytes]:
    """RFC 6962 §2.1.2 PROOF(old, D[0:new]), ordered as RFC 9162 §2.1.4.1 emits it.

    `old == new` and `old == 0` give `[]`: there is nothing to prove, and
    `verify_consistency` accepts exactly those empty proofs (see there).
    """
    _check_size(old, "old size")
    _check_size(new, "new size")
    if old > new:
        raise ValueError(f"old size {old} is larger than new size {new}")
    if old in (0, new):
        return []
    # SUBPROOF(m, D[start:end], b), unrolled: the recursion is a tail walk
    # down one branch, collecting one hash per level (again top-down).
    proof: list[bytes] = []
    start, end, m = 0, new, old
    complete = True  # b: is D[start:start+m] a subtree the verifier already has?
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            proof.append(_range_hash(start + k, end, get))
            end = start + k
        else:
            proof.append(_range_hash(start, start + k, get))
            start += k
            m -= k
            complete = False
    if not complete:
        proof.append(_range_hash(start, end, get))
    proof.reverse()
    return proof


# --- proof verification (RFC 9162 §2.1.3.2, §2.1.4.2) -------------------------------


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that LEAF HASH `leaf` is entry `index` of the tree `(size, root)`.

    RFC 9162 §2.1.3.2; raises `ProofError` saying which step failed.
    """
    # 0. Shapes: every hash is a SHA-256 digest (an empty or short "hash" can
    #    otherwise slip through as a proof element that is never combined).
    _check_hash(leaf, "leaf hash")
    _check_hash(root, "root hash")
    for i, p in enumerate(proof):
        _check_hash(p, f"proof[{i}]")
    # 1. The index must lie inside the tree.
    if index < 0 or size < 0:
        raise ProofError(f"negative index or size: index {index}, size {size}")
    if index >= size:
        raise ProofError(f"index {index} is not in a tree of size {size}")
    # 2.-3.
    fn, sn = index, size - 1
    r = leaf
    # 4. Climb; fn/sn are the positions of the node and of the tree's last node.
    for p in proof:
        if sn == 0:
            raise ProofError("proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            # On the right edge, levels with no right sibling are skipped.
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    # 5.
    if sn != 0:
        raise ProofError("proof is shorter than the path to the root")
    if r != root:
        raise ProofError("calculated root does not match the given root")


def verify_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that tree `(new, new_root)` extends tree `(old, old_root)`.

    RFC 9162 §2.1.4.2 for `0 < old < new`; raises `ProofError`. The two cases
    the RFC leaves to convention, as `consistency_proof` generates them:

    - `old == new`: the proof must be empty and the roots byte-equal. Nothing is
      hashed, so the roots are compared as given (no length check; the
      transparency-dev conformance vectors require exactly this).
    - `old == 0`: the empty tree is a prefix of every tree, but only if it is
      the empty tree: the proof must be empty, `old_root` must be `EMPTY_ROOT`
      and `new_root` a well-formed hash (`EMPTY_ROOT` too when `new == 0`).
    """
    if old < 0 or new < 0:
        raise ProofError(f"negative tree size: old {old}, new {new}")
    # 1. Sizes only grow.
    if old > new:
        raise ProofError(f"old size {old} is larger than new size {new}")
    if old == 0:
        _verify_from_empty(new, old_root, new_root, proof)
        return
    if old == new:
        _verify_same_size(old_root, new_root, proof)
        return
    _check_hash(old_root, "old root")
    _check_hash(new_root, "new root")
    for i, p in enumerate(proof):
        _check_hash(p, f"proof[{i}]")
    # 2. (RFC step 1) A proof between different trees is never empty.
    if not proof:
        raise ProofError("consistency proof is empty")
    # 3. (RFC step 2) When old is a perfect subtree the verifier already has
    #    its hash, so the proof omits it.
    path = list(proof)
    if old & (old - 1) == 0:
        path.insert(0, old_root)
    fr, sr = _consistency_roots(old, new, path)
    # 7. (RFC step 7, the roots)
    if fr != old_root:
        raise ProofError("calculated old root does not match the given old root")
    if sr != new_root:
        raise ProofError("calculated new root does not match the given new root")


def _verify_from_empty(new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
    """`old == 0`: an empty proof, the empty tree's root, a well-formed new root."""
    if proof:
        raise ProofError("a consistency proof from the empty tree must be empty")
    if old_root != EMPTY_ROOT:
        raise ProofError("old root is not the empty tree's root")
    _check_hash(new_root, "new root")
    if new == 0 and new_root != EMPTY_ROOT:
        raise ProofError("new root is not the empty tree's root")


def _verify_same_size(old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
    """`old == new`: an empty proof and byte-equal roots."""
    if proof:
        raise ProofError("old and new sizes are equal but the proof is not empty")
    if old_root != new_root:
        raise ProofError("old and new sizes are equal but the roots differ")


def _consistency_roots(old: int, new: int, path: list[bytes]) -> tuple[bytes, bytes]:
    """Steps 4 to 7 of `verify_consistency` (RFC 9162 §2.1.4.2 steps 3 to 7, but for
    comparing the roots), for `0 < old < new`: the old and the new root, rebuilt from
    one walk up `path`."""
    # 4. (RFC steps 3-4)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. (RFC step 5) fr rebuilds the old root, sr the new one, from one walk.
    fr = sr = path[0]
    # 6. (RFC step 6)
    for c in path[1:]:
        if sn == 0:
            raise ProofError("proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    # 7. (RFC step 7)
    if sn != 0:
        raise ProofError("proof is shorter than the path to the root")
    return fr, sr


# --- an in-memory node store --------------------------------------------------------


class MemoryTree:
    """Every complete node in a dict: for tests and the offline verifier.

    It keeps exactly what a storage backend keeps, so proofs from it exercise
    the same `NodeGetter` paths as proofs from SQLite or PostgreSQL.
    """

    __slots__ = ("_frontier", "_nodes")

    def __init__(self) -> None:
        self._nodes: dict[tuple[int, int], bytes] = {}
        self._frontier = Frontier()

    def __repr__(self) -> str:
        return f"MemoryTree(size={self.size})"

    @property
    def size(self) -> int:
        return self._frontier.size

    def append(self, data: bytes) -> int:
        """Append one entry (hashed as a leaf); return its index."""
        return self.append_leaf_hash(leaf_hash(data))

    def append_leaf_hash(self, h: bytes) -> int:
        """Append one precomputed LEAF HASH; return its index."""
        index = self._frontier.size
        for level, i, node in self._frontier.append(h):
            self._nodes[level, i] = node
        return index

    def get(self, level: int, index: int) -> bytes:
        """A `NodeGetter`: the complete node `(level, index)`; `KeyError` if there is none."""
        try:
            return self._nodes[level, index]
        except KeyError:
            raise KeyError(f"no complete node at level {level}, index {index}") from None

    def root(self, size: int | None = None) -> bytes:
        """Root of the whole tree, or of its first `size` leaves."""
        if size is None:
            return self._frontier.root()
        self._check_prefix(size)
        return root_from(size, self.get)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        size = self.size if size is None else size
        self._check_prefix(size)
        return inclusion_proof(index, size, self.get)

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        new = self.size if new is None else new
        self._check_prefix(new)
        return consistency_proof(old, new, self.get)

    def _check_prefix(self, size: int) -> None:
        if size > self.size:
            raise ValueError(f"size {size} is beyond the tree's {self.size} leaves")
