"""`gateway models pack|verify|list` and `gateway keys rotate|list|delete-retired`, end to end."""

from __future__ import annotations

from pathlib import Path

from models.demo import ASSETS_DIR, MODEL_ASSET
from tests.gateway.test_cli import run


def test_pack_verify_rotate_and_list(tmp_path: Path) -> None:
    data = str(tmp_path / "gw")
    assert run("init", "--data-dir", data).returncode == 0
    source = str(ASSETS_DIR / MODEL_ASSET)

    packed = run(
        "models", "pack", source, "--name", "demo-ranker", "--version", "2",
        "--quantize", "int8", "--holdout", "demo", "--data-dir", data,
    )  # fmt: skip
    assert packed.returncode == 0, packed.stderr
    assert "int8: max score difference" in packed.stdout
    assert "AUC" in packed.stdout

    again = run("models", "pack", source, "--name", "demo-ranker", "--version", "2",
                "--data-dir", data)  # fmt: skip
    assert again.returncode == 2
    assert again.stderr.startswith("error: pack refused:")

    listed = run("models", "list", "--data-dir", data)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert [line.split("\t")[:2] for line in lines] == [["demo-ranker", "1"], ["demo-ranker", "2"]]
    assert "int8-dynamic" in lines[1]

    verified = run("models", "verify", "--data-dir", data)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.count("ok demo-ranker") == 2

    rotated = run("keys", "rotate", "--delete-retired", "--data-dir", data)
    assert rotated.returncode == 0, rotated.stderr
    assert "re-wrapped: 2 model keys" in rotated.stdout
    assert "deleted retired KEK" in rotated.stdout
    keys = run("keys", "list", "--data-dir", data).stdout.splitlines()
    assert len(keys) == 1
    assert keys[0].split("\t")[1] == "active"
    assert keys[0].endswith("wraps 2")
    assert run("models", "verify", "--data-dir", data).returncode == 0

    enc = tmp_path / "gw" / "models" / "demo-ranker" / "2" / "model.onnx.enc"
    blob = bytearray(enc.read_bytes())
    blob[100] ^= 0xFF
    enc.write_bytes(bytes(blob))
    broken = run("models", "verify", "--data-dir", data)
    assert broken.returncode == 1
    assert "REFUSED demo-ranker 2: step signature: ContentMismatchError" in broken.stdout
    assert "ok demo-ranker 1" in broken.stdout


def test_pack_of_a_missing_file_is_one_error_line(tmp_path: Path) -> None:
    result = run("models", "pack", str(tmp_path / "none.onnx"), "--name", "m", "--version", "1",
                 "--data-dir", str(tmp_path))  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: cannot read")


def test_a_damaged_manifest_is_one_error_line_not_a_traceback(tmp_path: Path) -> None:
    data = tmp_path / "gw"
    assert run("init", "--data-dir", str(data)).returncode == 0
    (data / "models" / "demo-ranker" / "1" / "manifest.json").write_text("[]")
    result = run("models", "list", "--data-dir", str(data))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: ")
