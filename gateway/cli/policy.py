"""`gateway policy lint|test|sign|verify|diff`: policy bundles, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gateway.cli.options import load_policy, read_file
from gateway.errors import ConfigurationError

policy_app = typer.Typer(help="Lint, test, sign and diff policy bundles.", no_args_is_help=True)

BundleArg = Annotated[Path, typer.Argument(help="A bundle directory or packed .tar.gz")]


@policy_app.command("lint")
def policy_lint(bundle: BundleArg) -> None:
    """Check manifest, content hash, data policy, Cedar syntax and schema, references."""
    loaded = load_policy(bundle)
    signed = "signed" if loaded.signature else "UNSIGNED"
    typer.echo(
        f"ok: {loaded.name} {loaded.version} {loaded.content_hash} "
        f"({len(loaded.engine.policy_ids)} policies, {len(loaded.tests)} test cases, {signed})"
    )


@policy_app.command("test")
def policy_test(bundle: BundleArg) -> None:
    """Run the bundle's test cases; failures name the deciding policies."""
    from policies.testing import run_tests

    loaded = load_policy(bundle)
    report = run_tests(loaded)
    typer.echo(report.render(), err=not report.passed)
    if not report.passed:
        raise typer.Exit(1)


@policy_app.command("sign")
def policy_sign(
    bundle: Annotated[Path, typer.Argument(help="A bundle directory")],
    key: Annotated[Path, typer.Option("--key", help="Ed25519 private key file (base64, raw)")],
) -> None:
    """Sign a bundle directory (writes bundle.sig over its content hash)."""
    from policies.errors import PolicyError
    from policies.signing import key_id, public_key_of, sign_bundle

    if not bundle.is_dir():
        raise ConfigurationError(f"not a bundle directory: {bundle}")
    private = read_file(key).decode().strip()
    try:
        written = sign_bundle(bundle, private)
        kid = key_id(public_key_of(private))
    except PolicyError as exc:
        raise ConfigurationError(f"cannot sign: {exc}") from exc
    typer.echo(f"signed {bundle} with key {kid}: {written}")


@policy_app.command("verify")
def policy_verify(
    bundle: BundleArg,
    pubkey: Annotated[
        list[str], typer.Option("--pubkey", help="Trusted public key (base64), repeatable")
    ],
) -> None:
    """Verify a bundle's signature against trusted keys."""
    from policies.errors import PolicyError
    from policies.signing import verify_bundle_signature

    loaded = load_policy(bundle)
    try:
        kid = verify_bundle_signature(loaded, pubkey)
    except PolicyError as exc:
        raise ConfigurationError(f"signature: {exc}") from exc
    typer.echo(f"ok: {loaded.content_hash} signed by trusted key {kid}")


@policy_app.command("diff")
def policy_diff(old: BundleArg, new: BundleArg) -> None:
    """Which test cases and which sampled decisions change from OLD to NEW."""
    from policies.diff import diff_bundles

    before, after = load_policy(old), load_policy(new)
    typer.echo(diff_bundles(before, after).render())
