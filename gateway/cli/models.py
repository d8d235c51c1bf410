"""`gateway models pack|verify|list`: signed, encrypted model packages; `watermark-triggers|
    watermark-check`: proof that a suspect model was fitted on this gateway's answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gateway.cli.options import ConfigOpt, DataDirOpt, build_settings, load_policy, read_file
from gateway.errors import ConfigurationError

if TYPE_CHECKING:
    from gateway.settings import Settings
    from models.registry import ModelRegistry
    from models.watermark import TriggerSet

models_app = typer.Typer(
    help="Package, verify and list signed, encrypted models.", no_args_is_help=True
)


def _offline_registry(settings: Settings) -> ModelRegistry:
    """A registry that checks packages exactly as the gateway would, against the bundle on disk."""
    from models.ranker import Ranker
    from models.serving import open_registry
    from policies.in_force import InForce, without_bundle

    policy = without_bundle(settings.model.name)
    if settings.policy.engine == "cedar":
        bundle = load_policy(settings.resolve(settings.policy.bundle))
        policy = InForce(bundle.data, bundle.content_hash)

    def make_ranker(name: str, version: str, model_bytes: bytes) -> Ranker:
        return Ranker(name=name, version=version, model_bytes=model_bytes, inference_threads=1)

    return open_registry(settings, policy, make_ranker)


@models_app.command("pack")
def models_pack(
    source: Annotated[Path, typer.Argument(help="The plaintext ONNX model to package")],
    name: Annotated[str, typer.Option("--name", help="Model name")],
    version: Annotated[str, typer.Option("--version", help="Model version")],
    quantize: Annotated[
        str | None, typer.Option("--quantize", help="int8: onnxruntime dynamic quantisation")
    ] = None,
    holdout: Annotated[
        str | None,
        typer.Option(
            "--holdout", help="Holdout .npz (model inputs + `label`), or `demo` for the demo data"
        ),
    ] = None,
    stats: Annotated[
        Path | None,
        typer.Option("--stats", help=".npz of input arrays (by input name) for feature statistics"),
    ] = None,
    card: Annotated[
        Path | None, typer.Option("--card", help="Model card JSON (training metadata)")
    ] = None,
    key: Annotated[
        Path | None, typer.Option("--key", help="Signing key (default: packages.signing_key_file)")
    ] = None,
    max_score_diff: Annotated[float, typer.Option(help="INT8 gate: max |score change|")] = 0.05,
    max_auc_drop: Annotated[float, typer.Option(help="INT8 gate: max AUC drop")] = 0.005,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Check, optionally quantise, encrypt and sign a model into the package directory."""
    from models.demo_package import demo_holdout, demo_stats
    from models.pack import Holdout, QuantGate, load_holdout, pack_model
    from models.package_errors import PackError
    from models.stats import stats_from_npz
    from security.keyring import keyring_from_settings

    settings = build_settings(data_dir, config)
    model_bytes = read_file(source)
    held: Holdout | None = None
    if holdout == "demo":
        held = demo_holdout()
    elif holdout is not None:
        held = load_holdout(Path(holdout))
    if stats is not None:
        feature_stats = stats_from_npz(stats)
    else:
        store = settings.resolve(settings.model.features_path)
        # Without --stats, the configured feature store describes the model's inputs.
        feature_stats = demo_stats(store) if store.is_file() else {}
    training = json.loads(card.read_text()) if card is not None else {}
    try:
        result = pack_model(
            model_bytes,
            name=name,
            version=version,
            root=settings.resolve(settings.packages.directory),
            keyring=keyring_from_settings(settings),
            signing_key=key or settings.resolve(settings.packages.signing_key_file),
            feature_stats=feature_stats,
            training=training,
            quantize=quantize,
            holdout=held,
            gate=QuantGate(max_score_diff=max_score_diff, max_auc_drop=max_auc_drop),
        )
    except PackError as exc:
        raise ConfigurationError(f"pack refused: {exc}") from exc
    manifest = result.manifest
    typer.echo(f"packaged {name} {version} -> {result.directory}")
    typer.echo(f"  model sha256 {manifest['model']['sha256']}")
    typer.echo(f"  encrypted under KEK {manifest['encryption']['kek_id_at_pack']}")
    if result.quantization is not None:
        q = result.quantization
        typer.echo(
            f"  int8: max score difference {q.max_score_diff:.6f}, AUC {q.auc_fp32:.6f} -> "
            f"{q.auc_int8:.6f} (drop {q.auc_drop:.6f}) on {q.rows} holdout rows"
        )


@models_app.command("verify")
def models_verify(
    name: Annotated[str | None, typer.Argument(help="Only this model")] = None,
    version: Annotated[str | None, typer.Argument(help="Only this version")] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Run every loader step (signature, policy, unwrap, decrypt, digest, session) per package."""
    from models.package_errors import ModelPackageError

    settings = build_settings(data_dir, config)
    registry = _offline_registry(settings)
    targets = [
        (n, v)
        for n, v in registry.on_disk()
        if (name is None or n == name) and (version is None or v == version)
    ]
    if not targets:
        raise ConfigurationError("no model packages found")
    failed = 0
    for model, ver in targets:
        try:
            loaded = registry.load(model, ver)
        except ModelPackageError as exc:
            failed += 1
            typer.echo(f"REFUSED {model} {ver}: step {exc.step}: {type(exc).__name__}: {exc}")
            continue
        info = loaded.describe()
        typer.echo(f"ok {model} {ver} {info['package_digest']} signed by {info['signer']}")
    registry.close()
    if failed:
        raise typer.Exit(1)


@models_app.command("list")
def models_list(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """Every package on disk: name, version, package digest, key id, quantisation, served."""
    import hashlib

    from models.package_format import MANIFEST, WRAPPED_DEK

    settings = build_settings(data_dir, config)
    registry = _offline_registry(settings)
    found = registry.on_disk()
    if not found:
        raise ConfigurationError(
            f"no model packages under {registry.root}; run `gateway init` or `gateway models pack`"
        )
    for model, ver in found:
        directory = registry.root / model / ver
        try:
            raw = (directory / MANIFEST).read_bytes()
            manifest = json.loads(raw)
            kek = json.loads((directory / WRAPPED_DEK).read_text()).get("kek_id", "?")
        except (OSError, ValueError):
            typer.echo(f"{model}\t{ver}\tNOT A PACKAGE\t{directory}")
            continue
        quant = (manifest.get("quantization") or {}).get("mode", "fp32")
        served = model == settings.model.name and ver == settings.model.version
        typer.echo(
            f"{model}\t{ver}\tsha256:{hashlib.sha256(raw).hexdigest()}\tkek:{kek}\t{quant}"
            f"{chr(9) + 'configured' if served else ''}\t{directory}"
        )


# -- proof of extraction (models.watermark) --------------------------------------------


def _watermark_key(settings: Settings) -> bytes:
    from gateway.derivation import Purpose
    from models.watermark import model_key

    return model_key(settings.derived_keys[Purpose.MODEL_WATERMARK], settings.model.name)


def _trigger_set(settings: Settings, key: bytes) -> TriggerSet:
    from models.features import load_arrays
    from models.watermark import WatermarkError, trigger_set

    store = settings.resolve(settings.model.features_path)
    try:
        return trigger_set(key, load_arrays(store))
    except (OSError, ValueError, KeyError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        if isinstance(exc, WatermarkError):
            reason = exc
        raise ConfigurationError(f"feature store {store}: {reason}") from exc


def _suspect_scores(path: Path) -> tuple[list[object], str | None]:
    """A JSON list of numbers, or {"scores": [...], "trigger_set": "..."}, or one number
    per line; the trigger set's digest when the file names it."""
    text = read_file(path).decode("utf-8", errors="replace").strip()
    if not text:
        raise ConfigurationError(f"{path}: empty scores file")
    if text[0] in "[{":
        try:
            found = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{path}: not JSON ({exc.msg}, line {exc.lineno})") from None
        except RecursionError:
            raise ConfigurationError(f"{path}: JSON nested too deeply") from None
        digest = None
        if isinstance(found, dict):
            digest = found.get("trigger_set")
            found = found.get("scores")
            if digest is not None and not isinstance(digest, str):
                raise ConfigurationError(f"{path}: trigger_set must be a string")
        if not isinstance(found, list):
            raise ConfigurationError(f"{path}: expected a list of scores (or {{'scores': [...]}})")
        return found, digest
    values: list[object] = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            values.append(float(line))
        except ValueError:
            raise ConfigurationError(f"{path}: line {number} is not a number") from None
    return values, None


@models_app.command("watermark-triggers")
def models_watermark_triggers(
    out: Annotated[Path, typer.Option("--out", help="Where to write the trigger set (JSON)")],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Write the keyed trigger inputs to send to a suspect model.

    The file holds catalogue (user, item) id pairs and their store features (mode 0600:
    store rows); score them with the suspect, in order, and give the scores to
    `gateway models watermark-check`. The key never leaves this box: the set is
    regenerated from the gateway's secret at check time."""
    from gateway.files import replace_private

    settings = build_settings(data_dir, config)
    triggers = _trigger_set(settings, _watermark_key(settings))
    body = json.dumps(triggers.as_json(settings.model.name), separators=(",", ":"))
    try:
        replace_private(out, body.encode())
    except OSError as exc:
        raise ConfigurationError(f"cannot write {out}: {exc.strerror}") from exc
    typer.echo(f"wrote {len(triggers)} trigger rows (set {triggers.digest[:16]}) to {out}")


@models_app.command("watermark-check")
def models_watermark_check(
    scores: Annotated[
        Path, typer.Option("--scores", help="The suspect's scores on the trigger set, in order")
    ],
    version: Annotated[
        str | None,
        typer.Option("--version", help="Our model version to compare with (default: configured)"),
    ] = None,
    alpha: Annotated[
        float, typer.Option("--alpha", help="Significance level of the verdict")
    ] = 1e-4,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Does a suspect model carry this gateway's watermark? Prints the p-value and a verdict.

    Exit status: 0 the watermark is detected (p < alpha, and no null key reaches the
    statistic); 1 not detected; 2 the check could not run (bad file, no model, no store).
    """
    from models.package_errors import ModelPackageError
    from models.watermark import Standardiser, Watermark, WatermarkError, check, scores_vector
    from policies.data_policy import WatermarkPolicy

    if not 0.0 < alpha < 1.0:
        raise ConfigurationError("--alpha must be within (0, 1)")
    settings = build_settings(data_dir, config)
    values, digest = _suspect_scores(scores)
    key = _watermark_key(settings)
    triggers = _trigger_set(settings, key)
    if digest is not None and digest != triggers.digest:
        raise ConfigurationError(
            f"{scores}: scores for trigger set {digest[:16]}, not this gateway's "
            f"{triggers.digest[:16]} (another key, or the store changed)"
        )
    try:
        suspect = scores_vector(values, len(triggers))  # type: ignore[arg-type]
    except WatermarkError as exc:
        raise ConfigurationError(f"{scores}: {exc}") from exc
    name, ver = settings.model.name, version or settings.model.version
    mark = WatermarkPolicy()  # the bundle's mark settings, else the defaults
    if settings.policy.engine == "cedar":
        found = load_policy(settings.resolve(settings.policy.bundle)).data.model(name)
        mark = found.watermark if found is not None else mark
    registry = _offline_registry(settings)
    try:
        loaded = registry.load(name, ver)
    except ModelPackageError as exc:
        raise ConfigurationError(f"model {name} {ver} refused at step {exc.step}: {exc}") from exc
    try:
        stats = Standardiser.from_stats(loaded.feature_stats, mark.inputs)
        (first, *_) = loaded.ranker.run_sync(triggers.feeds).values()
        reference = first.astype("float64").ravel()
        result = check(
            Watermark(key, stats), triggers.feeds, suspect, reference,
            strength=mark.strength, alpha=alpha,
        )
    except WatermarkError as exc:
        raise ConfigurationError(f"model {name} {ver}: {exc}") from exc
    finally:
        registry.close()
    typer.echo(f"model {name} {ver}, trigger set {triggers.digest[:16]}, {result.rows} rows")
    typer.echo(
        f"statistic {result.statistic:.4f} (null keys: mean {result.null_mean:.4f}, "
        f"sd {result.null_sd:.4f}, z {result.z:.2f}, n {result.null_keys})"
    )
    typer.echo(f"p-value {result.p_value:.3e} (rank among null keys: p {result.p_rank:.1e})")
    if result.detected:
        typer.echo(f"verdict: WATERMARK DETECTED at alpha {alpha:g}")
        raise typer.Exit(0)
    typer.echo(f"verdict: not detected at alpha {alpha:g}")
    raise typer.Exit(1)
