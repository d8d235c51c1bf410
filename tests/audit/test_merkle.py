"""RFC 6962 / RFC 9162 Merkle math: conformance vectors, known answers, properties."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    Frontier,
    MemoryTree,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    reference_root,
    root_from,
    subtree_hash,
    verify_consistency,
    verify_inclusion,
)

# transparency-dev/merkle's testdata, in the repository (see tests/assets/rfc6962/NOTICE).
VECTORS = Path(__file__).resolve().parents[1] / "assets" / "rfc6962"

PROPS = settings(max_examples=150, deadline=None)


def _vector_params(kind: str) -> list[Any]:
    files = sorted((VECTORS / kind).rglob("*.json"))
    return [pytest.param(f, id=f.relative_to(VECTORS / kind).as_posix()) for f in files]


def _b64(value: str) -> bytes:
    return base64.b64decode(value)


def _proof(raw: list[str] | None) -> list[bytes]:
    return [_b64(p) for p in raw or []]


@pytest.mark.parametrize("path", _vector_params("inclusion"))
def test_inclusion_vector(path: Path) -> None:
    v = json.loads(path.read_text())
    args = (_b64(v["leafHash"]), v["leafIdx"], v["treeSize"], _proof(v["proof"]), _b64(v["root"]))
    if v["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("path", _vector_params("consistency"))
def test_consistency_vector(path: Path) -> None:
    v = json.loads(path.read_text())
    args = (v["size1"], v["size2"], _b64(v["root1"]), _b64(v["root2"]), _proof(v["proof"]))
    if v["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


def test_vectors_are_all_found() -> None:
    # Guards the parametrisation: a moved folder must not shrink to a handful of cases.
    assert VECTORS.is_dir(), f"RFC 6962 conformance vectors NOT FOUND at {VECTORS}"
    assert len(list((VECTORS / "inclusion").rglob("*.json"))) >= 90
    assert len(list((VECTORS / "consistency").rglob("*.json"))) >= 90


# --- known answers (transparency-dev/merkle's reference tree of 8 leaves) ----------

KAT_LEAVES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
KAT_ROOTS = [
    bytes.fromhex(h)
    for h in [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
]


def test_hash_known_answers() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert (
        node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    )
    assert len(EMPTY_ROOT) == HASH_SIZE


@pytest.mark.parametrize("size", range(1, 9))
def test_roots_known_answers(size: int) -> None:
    hashes = [leaf_hash(d) for d in KAT_LEAVES[:size]]
    assert reference_root(hashes) == KAT_ROOTS[size - 1]
    tree = MemoryTree()
    for d in KAT_LEAVES:
        tree.append(d)
    assert tree.root(size) == KAT_ROOTS[size - 1]


def test_proofs_known_answers() -> None:
    tree = MemoryTree()
    for d in KAT_LEAVES:
        tree.append(d)
    h = bytes.fromhex
    assert tree.inclusion_proof(5, 8) == [
        h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
        h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    ]
    assert tree.consistency_proof(6, 7) == [
        h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
        h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
        h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    ]
    assert tree.consistency_proof(2, 5) == [
        h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
        h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
    ]


def test_empty_tree() -> None:
    tree = MemoryTree()
    assert tree.root() == EMPTY_ROOT == reference_root([]) == Frontier().root()
    assert root_from(0, tree.get) == EMPTY_ROOT
    assert tree.consistency_proof(0, 0) == []


# --- properties against the naive reference ----------------------------------------


def _tree(size: int, salt: bytes) -> tuple[MemoryTree, list[bytes]]:
    tree = MemoryTree()
    for i in range(size):
        assert tree.append(salt + i.to_bytes(2, "big")) == i
    return tree, [tree.get(0, i) for i in range(size)]


def _flip(value: bytes, at: int = 0) -> bytes:
    return value[:at] + bytes([value[at] ^ 0x01]) + value[at + 1 :]


@PROPS
@given(st.lists(st.binary(max_size=8), max_size=200))
def test_frontier_root_is_reference_root(entries: list[bytes]) -> None:
    frontier = Frontier()
    for d in entries:
        frontier.append(leaf_hash(d))
    assert frontier.size == len(entries)
    assert frontier.root() == reference_root([leaf_hash(d) for d in entries])


@PROPS
@given(st.integers(1, 200), st.binary(max_size=4))
def test_append_reports_every_complete_node(size: int, salt: bytes) -> None:
    frontier = Frontier()
    leaves = [leaf_hash(salt + i.to_bytes(2, "big")) for i in range(size)]
    for i, leaf in enumerate(leaves):
        completed = frontier.append(leaf)
        assert completed[0] == (0, i, leaf)
        # One node per trailing 1 bit of the old size, each a perfect subtree.
        assert len(completed) == 1 + (i ^ (i + 1)).bit_length() - 1
        for level, index, h in completed:
            width = 1 << level
            assert h == reference_root(leaves[index * width : (index + 1) * width])


@PROPS
@given(st.data(), st.integers(1, 200), st.binary(max_size=4))
def test_inclusion_proofs(data: st.DataObject, size: int, salt: bytes) -> None:
    tree, leaves = _tree(size, salt)
    root = reference_root(leaves)
    index = data.draw(st.integers(0, size - 1), label="index")
    proof = tree.inclusion_proof(index, size)
    assert len(proof) <= (size - 1).bit_length()
    verify_inclusion(leaves[index], index, size, proof, root)

    if size > 1:
        other = (index + data.draw(st.integers(1, size - 1), label="offset")) % size
        with pytest.raises(ProofError):
            verify_inclusion(leaves[other], index, size, proof, root)
        with pytest.raises(ProofError):
            verify_inclusion(leaves[index], other, size, proof, root)
    with pytest.raises(ProofError):
        verify_inclusion(leaf_hash(b"not in the log"), index, size, proof, root)
    with pytest.raises(ProofError):
        verify_inclusion(leaves[index], index, size, proof, _flip(root))
    for at in range(len(proof)):
        tampered = [*proof[:at], _flip(proof[at], at % HASH_SIZE), *proof[at + 1 :]]
        with pytest.raises(ProofError):
            verify_inclusion(leaves[index], index, size, tampered, root)


@PROPS
@given(st.data(), st.integers(2, 200), st.binary(max_size=4))
def test_consistency_proofs(data: st.DataObject, size: int, salt: bytes) -> None:
    tree, leaves = _tree(size, salt)
    old = data.draw(st.integers(1, size - 1), label="old")
    old_root, new_root = reference_root(leaves[:old]), reference_root(leaves)
    proof = tree.consistency_proof(old, size)
    assert 1 <= len(proof) <= (size - 1).bit_length() + 1
    verify_consistency(old, size, old_root, new_root, proof)

    for at in range(len(proof)):
        tampered = [*proof[:at], _flip(proof[at], at % HASH_SIZE), *proof[at + 1 :]]
        with pytest.raises(ProofError):
            verify_consistency(old, size, old_root, new_root, tampered)
    with pytest.raises(ProofError):
        verify_consistency(old, size, _flip(old_root), new_root, proof)
    with pytest.raises(ProofError):
        verify_consistency(old, size, old_root, _flip(new_root), proof)
    with pytest.raises(ProofError):
        verify_consistency(old, size, new_root, old_root, proof)
    with pytest.raises(ProofError):
        verify_consistency(old, size, old_root, new_root, proof[:-1])
    with pytest.raises(ProofError):
        verify_consistency(old, size, old_root, new_root, [*proof, new_root])


@PROPS
@given(st.integers(0, 200), st.binary(max_size=4))
def test_trivial_consistency_conventions(size: int, salt: bytes) -> None:
    tree, leaves = _tree(size, salt)
    root = reference_root(leaves)
    # From the empty tree, and to the same tree: nothing to prove, and accepted.
    assert tree.consistency_proof(0, size) == []
    verify_consistency(0, size, EMPTY_ROOT, root, [])
    assert tree.consistency_proof(size, size) == []
    verify_consistency(size, size, root, root, [])
    if size:
        with pytest.raises(ProofError):
            verify_consistency(0, size, root, root, [])
        with pytest.raises(ProofError):
            verify_consistency(size, size, root, _flip(root), [])


@PROPS
@given(st.data(), st.integers(0, 200), st.binary(max_size=4))
def test_frontier_from_nodes_round_trips(data: st.DataObject, size: int, salt: bytes) -> None:
    tree, leaves = _tree(size, salt)
    prefix = data.draw(st.integers(0, size), label="prefix")
    appended = Frontier()
    for leaf in leaves[:prefix]:
        appended.append(leaf)
    rebuilt = Frontier.from_nodes(prefix, tree.get)
    assert rebuilt == appended
    assert rebuilt.root() == root_from(prefix, tree.get) == reference_root(leaves[:prefix])
    assert Frontier(rebuilt.size, rebuilt.hashes()) == rebuilt
    # A copy is independent of its original.
    copy = rebuilt.copy()
    copy.append(leaf_hash(b"more"))
    assert rebuilt == appended != copy


@PROPS
@given(st.data(), st.integers(1, 200), st.binary(max_size=4))
def test_subtree_hash_is_reference_over_the_slice(
    data: st.DataObject, size: int, salt: bytes
) -> None:
    tree, leaves = _tree(size, salt)
    start = data.draw(st.integers(0, size), label="start")
    end = data.draw(st.integers(start, size), label="end")
    assert subtree_hash(start, end, tree.get) == reference_root(leaves[start:end])


@pytest.mark.parametrize("size", range(1, 34))
def test_every_proof_in_small_trees(size: int) -> None:
    # Exhaustive where cheap: every index and every old size, not a sample.
    tree, leaves = _tree(size, b"x")
    roots = [reference_root(leaves[:n]) for n in range(size + 1)]
    for index in range(size):
        verify_inclusion(leaves[index], index, size, tree.inclusion_proof(index, size), roots[size])
    for old in range(size + 1):
        verify_consistency(old, size, roots[old], roots[size], tree.consistency_proof(old, size))


# --- cost: proofs read O(log n) stored nodes ----------------------------------------


class CountingNodes:
    """A synthetic store of any size: a node's hash is a function of its address."""

    def __init__(self) -> None:
        self.reads = 0

    def get(self, level: int, index: int) -> bytes:
        self.reads += 1
        return hashlib.sha256(f"{level}/{index}".encode()).digest()


@pytest.mark.parametrize("size", [2**40 - 1, 2**40, 2**40 + 1, 10**12 + 12345, 2**63 - 1])
def test_proofs_read_logarithmically_many_nodes(size: int) -> None:
    bound = 2 * size.bit_length() + 2
    for index in (0, 1, size // 3, size - 2, size - 1):
        nodes = CountingNodes()
        inclusion_proof(index, size, nodes.get)
        assert nodes.reads <= bound
    for old in (1, 2, 3, size // 2, size - 1):
        nodes = CountingNodes()
        consistency_proof(old, size, nodes.get)
        assert nodes.reads <= bound
    nodes = CountingNodes()
    root_from(size, nodes.get)
    assert nodes.reads == size.bit_count()


# --- input validation ------------------------------------------------------------------


@pytest.mark.parametrize(("index", "size"), [(-1, 5), (5, 5), (6, 5), (0, 0), (0, -1)])
def test_inclusion_proof_rejects_impossible_requests(index: int, size: int) -> None:
    tree, _ = _tree(5, b"")
    with pytest.raises(ValueError, match=r"index|negative"):
        inclusion_proof(index, size, tree.get)


@pytest.mark.parametrize(("old", "new"), [(-1, 3), (4, 3), (1, -1)])
def test_consistency_proof_rejects_impossible_requests(old: int, new: int) -> None:
    tree, _ = _tree(5, b"")
    with pytest.raises(ValueError, match=r"larger|negative"):
        consistency_proof(old, new, tree.get)


def test_memory_tree_rejects_sizes_beyond_its_end() -> None:
    tree, _ = _tree(5, b"")
    with pytest.raises(ValueError, match="beyond"):
        tree.inclusion_proof(0, 6)
    with pytest.raises(ValueError, match="beyond"):
        tree.consistency_proof(1, 6)
    with pytest.raises(ValueError, match="beyond"):
        tree.root(6)
    with pytest.raises(KeyError, match="no complete node"):
        tree.get(1, 2)  # leaves 4..5 are not a complete pair yet


def test_generators_reject_non_int_sizes() -> None:
    tree, _ = _tree(5, b"")
    with pytest.raises(TypeError):
        inclusion_proof(True, 5, tree.get)


def test_subtree_hash_rejects_reversed_range() -> None:
    tree, _ = _tree(5, b"")
    with pytest.raises(ValueError, match="past its end"):
        subtree_hash(3, 2, tree.get)
    assert subtree_hash(2, 2, tree.get) == EMPTY_ROOT


def test_verifiers_reject_malformed_input() -> None:
    tree, leaves = _tree(4, b"")
    root = tree.root()
    proof = tree.inclusion_proof(1)
    with pytest.raises(ProofError, match="negative"):
        verify_inclusion(leaves[1], -1, 4, proof, root)
    with pytest.raises(ProofError, match="not in a tree"):
        verify_inclusion(leaves[1], 4, 4, proof, root)
    with pytest.raises(ProofError, match="leaf hash is 31 bytes"):
        verify_inclusion(leaves[1][:31], 1, 4, proof, root)
    with pytest.raises(ProofError, match="root hash is 33 bytes"):
        verify_inclusion(leaves[1], 1, 4, proof, root + b"\x00")
    with pytest.raises(ProofError, match=r"proof\[1\] is 0 bytes"):
        verify_inclusion(leaves[1], 1, 4, [proof[0], b""], root)
    old_root = tree.root(3)
    cproof = tree.consistency_proof(3, 4)
    with pytest.raises(ProofError, match="negative"):
        verify_consistency(-1, 4, old_root, root, cproof)
    with pytest.raises(ProofError, match="larger"):
        verify_consistency(4, 3, root, old_root, cproof)
    with pytest.raises(ProofError, match="old root is 3 bytes"):
        verify_consistency(3, 4, b"abc", root, cproof)
    with pytest.raises(ProofError, match="empty"):
        verify_consistency(3, 4, old_root, root, [])


@pytest.mark.parametrize(
    ("size", "hashes"),
    [(1, []), (3, [b"\x00" * 32]), (1, [b"\x00" * 31]), (-1, [])],
)
def test_frontier_rejects_inconsistent_state(size: int, hashes: list[bytes]) -> None:
    with pytest.raises(ValueError, match=r"hashes|bytes|negative"):
        Frontier(size, hashes)


def test_frontier_rejects_short_leaf() -> None:
    with pytest.raises(ValueError, match="31 bytes"):
        Frontier().append(b"\x00" * 31)
