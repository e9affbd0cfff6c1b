"""Getting a Chatterbox model into memory: weights, offline tokenizer files, device, dtype.

``load_model`` builds the model with the library's ``from_local`` (a local checkpoint
directory) or ``from_pretrained`` (the Hugging Face hub and its cache). Two library
behaviours are corrected on the way, both for the multilingual tokenizer of 0.1.7:

- it downloads ``Cangjie5_TC.json`` from the hub even when loading from a directory, and
- its pkuseg word segmenter downloads a model at load time.

With a local directory ttsd reads ``Cangjie5_TC.json`` from that directory and the pkuseg
model from ``DIR/pkuseg/`` (or ``$PKUSEG_HOME/spacy_ontonotes/``), and never opens a
network connection; the segmenter is built on the first Chinese text only.

``quiet_library`` keeps the library's progress bars and prints out of the daemon's log.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ttsd.engines.base import EngineError
from ttsd.engines.chatterbox.settings import (
    HUB_REPOS,
    LOCAL_ALTERNATIVES,
    LOCAL_FILES,
    WEIGHTS_FILE,
)

log = logging.getLogger("ttsd.engines.chatterbox")

#: Modules whose ``print`` and ``tqdm`` ``quiet_library`` replaces.
_NOISY_PACKAGES = ("chatterbox", "perth", "s3tokenizer")


@dataclass
class Loaded:
    """A model as loaded: the object, where its weights came from and their identity."""

    model: Any
    source: str  # "dir:/abs/path" or "hub:owner/repo": shown in describe()
    checkpoint: str  # changes whenever the weights do: part of the voice cache key


def model_class(kind: str) -> Any:
    """The library class for ``kind``; ``EngineError`` when chatterbox-tts is missing."""
    try:
        if kind == "turbo":
            from chatterbox.tts_turbo import ChatterboxTurboTTS as cls
        elif kind == "multilingual":
            from chatterbox.mtl_tts import ChatterboxMultilingualTTS as cls
        else:
            from chatterbox.tts import ChatterboxTTS as cls
    except ImportError as exc:
        raise EngineError(
            f"chatterbox-tts is not installed or broken ({exc}): pip install 'ttsd[chatterbox]'",
            "engine_load",
        ) from exc
    return cls


def library_version() -> str:
    """The installed chatterbox-tts version, or ``"unknown"``."""
    try:
        return importlib.metadata.version("chatterbox-tts")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def check_watermarker() -> None:
    """Fail clearly when resemble-perth cannot build its watermarker.

    Every Chatterbox model calls ``perth.PerthImplicitWatermarker()`` in its constructor;
    perth sets that name to None when its import fails, as it does with setuptools 81
    and later (no more ``pkg_resources``), and the model then dies with "'NoneType'
    object is not callable".
    """
    try:
        import perth
    except ImportError as exc:
        raise EngineError(
            f"resemble-perth (the watermarker of chatterbox-tts) cannot be imported: {exc}",
            "engine_load",
        ) from exc
    if getattr(perth, "PerthImplicitWatermarker", None) is None:
        raise EngineError(
            "resemble-perth cannot load PerthImplicitWatermarker, which chatterbox-tts "
            "needs; this happens with setuptools 81 or later (perth imports pkg_resources): "
            "pip install 'setuptools<81' in the daemon's environment",
            "engine_load",
        )


def resolve_device(setting: str) -> str:
    """Turn the ``device`` setting into a torch device string; fail if it is unusable."""
    import torch

    if setting == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError(f"device = {setting!r} but torch sees no CUDA GPU", "engine_load")
    if setting == "mps" and not torch.backends.mps.is_available():
        raise EngineError("device = 'mps' but torch reports MPS unavailable", "engine_load")
    return setting


def local_problem(kind: str, model_dir: Path | None) -> str | None:
    """Why ``model_dir`` cannot be loaded with ``from_local`` (None when it can)."""
    if model_dir is None:
        return "model_dir is not set"
    if not model_dir.is_dir():
        return f"model_dir {model_dir} does not exist"
    missing = [f for f in LOCAL_FILES[kind] if not (model_dir / f).is_file()]
    alternatives = LOCAL_ALTERNATIVES.get(kind)
    if alternatives and not any(
        all((model_dir / f).is_file() for f in group) for group in alternatives
    ):
        missing.append(" or ".join("+".join(group) for group in alternatives))
    if missing:
        return f"model_dir {model_dir} lacks {', '.join(missing)}"
    return None


def required_files(kind: str) -> str:
    """The files a local directory of ``kind`` needs, as a phrase for error messages."""
    names = list(LOCAL_FILES[kind])
    for group in LOCAL_ALTERNATIVES.get(kind, ()):
        names.append("+".join(group))
        break
    return ", ".join(names)


def load_model(kind: str, model_dir: Path | None, device: str) -> Loaded:
    """Build the model from ``model_dir`` when it is complete, else from the hub.

    One ``EngineError`` names both ways and why each failed when neither works.
    """
    cls = model_class(kind)
    problem = local_problem(kind, model_dir)
    if problem is None and model_dir is not None:
        log.info("loading chatterbox %s weights from %s", kind, model_dir)
        try:
            with _offline_tokenizer(kind, model_dir, allow_download=False), quiet_output():
                model = cls.from_local(str(model_dir), device)
        except Exception as exc:
            raise EngineError(
                f"cannot load Chatterbox {kind} weights from model_dir {model_dir} "
                f"(from_local): {type(exc).__name__}: {exc}",
                "engine_load",
            ) from exc
        quiet_library()
        weights = model_dir / WEIGHTS_FILE[kind]
        stat = weights.stat()
        checkpoint = f"dir:{model_dir.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        return Loaded(model, f"dir:{model_dir.resolve()}", checkpoint)
    if model_dir is not None:
        log.warning("chatterbox: %s; trying the Hugging Face hub", problem)
    repo = HUB_REPOS[kind]
    log.info("loading chatterbox %s weights from the hub (%s)", kind, repo)
    try:
        with _offline_tokenizer(kind, None, allow_download=True), quiet_output():
            model = cls.from_pretrained(device)
    except Exception as exc:
        raise EngineError(
            f"no Chatterbox {kind} weights: (1) local checkpoint: {problem} "
            f"(set model_dir in [chatterbox] to a directory with {required_files(kind)}); "
            f"(2) Hugging Face hub ({repo}, from_pretrained): {type(exc).__name__}: "
            f"{_first_line(exc)} (needs network once, then the hub cache; "
            f"HF_HUB_OFFLINE=1 uses the cache only)",
            "engine_load",
        ) from exc
    quiet_library()
    return Loaded(model, f"hub:{repo}", f"hub:{repo}:{_hub_snapshot(repo, WEIGHTS_FILE[kind])}")


def _hub_snapshot(repo: str, filename: str) -> str:
    """The cached path of ``filename`` (it names the snapshot's commit), or "unknown"."""
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(repo, filename)
    except Exception as exc:  # only a cache key ingredient: a vaguer key is still correct
        log.debug("cannot locate %s in the hub cache: %s", filename, exc)
        return "unknown"
    return str(path) if isinstance(path, str) else "unknown"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


# -- the multilingual tokenizer without the network -------------------------------------


def pkuseg_dir(model_dir: Path | None) -> Path | None:
    """Where a pkuseg model (``features.msgpack`` + ``weights.npz``) is, or None."""
    home = Path(os.path.expanduser(os.environ.get("PKUSEG_HOME", "~/.pkuseg")))
    for candidate in ([model_dir / "pkuseg"] if model_dir else []) + [home / "spacy_ontonotes"]:
        if (candidate / "features.msgpack").is_file() and (candidate / "weights.npz").is_file():
            return candidate
    return None


def _converter_class(model_dir: Path | None, allow_download: bool) -> Any:
    """A ``ChineseCangjieConverter`` that reads its files locally and segments lazily."""
    from chatterbox.models.tokenizers import tokenizer as library

    class LocalCangjieConverter(library.ChineseCangjieConverter):  # type: ignore[misc,name-defined]
        """Cangjie table from the checkpoint directory; pkuseg built on first use."""

        def __init__(self, directory: Any = None) -> None:
            # The library passes the tokenizer file's directory: the checkpoint itself.
            self._directory = model_dir or (Path(directory) if directory else None)
            self._segmenter_ready = False
            super().__init__(directory)

        def _load_cangjie_mapping(self, model_dir: Any = None) -> None:
            path = self._directory / "Cangjie5_TC.json" if self._directory else None
            if path is None or not path.is_file():
                log.warning(
                    "chatterbox multilingual: no Cangjie5_TC.json in %s; Chinese text will "
                    "be spelled without Cangjie codes",
                    self._directory,
                )
                return
            with open(path, encoding="utf-8") as fp:
                entries = json.load(fp)
            for entry in entries:  # "word\tcode..." as in the library's own reader
                word, code = entry.split("\t")[:2]
                self.word2cj[word] = code
                self.cj2word.setdefault(code, []).append(word)

        def _init_segmenter(self) -> None:
            self.segmenter = None  # built by __call__ on the first Chinese text

        def __call__(self, text: str) -> str:
            if not self._segmenter_ready:
                self._segmenter_ready = True
                self.segmenter = _make_segmenter(self._directory, allow_download)
            return str(super().__call__(text))

    return LocalCangjieConverter


def _make_segmenter(model_dir: Path | None, allow_download: bool) -> Any:
    """pkuseg from local files; from its download only when ``allow_download``; else None."""
    try:
        from spacy_pkuseg import pkuseg
    except ImportError:
        log.warning("spacy-pkuseg is not installed: Chinese text is not word-segmented")
        return None
    local = pkuseg_dir(model_dir)
    if local is not None:
        with quiet_output():
            return pkuseg(model_name=str(local))
    if allow_download:
        with quiet_output():
            return pkuseg()
    log.warning(
        "no pkuseg model in %s/pkuseg or $PKUSEG_HOME/spacy_ontonotes: Chinese text is not "
        "word-segmented (see docs/chatterbox.md)",
        model_dir,
    )
    return None


@contextlib.contextmanager
def _offline_tokenizer(kind: str, model_dir: Path | None, allow_download: bool) -> Iterator[None]:
    """While the multilingual model loads, make its tokenizer use the local converter."""
    if kind != "multilingual":
        yield
        return
    from chatterbox.models.tokenizers import tokenizer as library

    original = library.ChineseCangjieConverter
    library.ChineseCangjieConverter = _converter_class(model_dir, allow_download)
    try:
        yield
    finally:
        library.ChineseCangjieConverter = original


# -- silence -------------------------------------------------------------------------------


def _library_print(*args: Any, sep: str | None = " ", **_: Any) -> None:
    """Stands in for ``print`` in the library's modules: a debug line in the log."""
    text = (sep if sep is not None else " ").join(str(a) for a in args).strip()
    if text:
        log.debug("library: %s", text)


def _no_progress(iterable: Any = None, *_: Any, **__: Any) -> Any:
    """Stands in for ``tqdm`` in the library's modules: the iterable, unwrapped."""
    return iterable if iterable is not None else contextlib.nullcontext()


def quiet_library() -> None:
    """Send the library's prints to the debug log and drop its progress bars, for good.

    chatterbox-tts prints and draws tqdm bars on every chunk (Turbo's vocoder prints
    "S3 Token -> Mel Inference..." and a bar), which would land in the daemon's journal.
    Replacing the module-level names ``print`` and ``tqdm`` in the loaded modules of
    chatterbox, perth and s3tokenizer silences exactly those calls and nothing else in
    the process. Idempotent; called after each load, when those modules are imported.
    """
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(_NOISY_PACKAGES):
            continue
        if name.split(".")[0] not in _NOISY_PACKAGES:
            continue
        namespace = vars(module)
        namespace["print"] = _library_print
        if "tqdm" in namespace:
            namespace["tqdm"] = _no_progress


@contextlib.contextmanager
def quiet_output() -> Iterator[None]:
    """Route stdout to the debug log while the library loads (its constructors print).

    Only used around loading, which runs before any job, so borrowing the process-wide
    ``sys.stdout`` briefly cannot swallow anyone else's output that matters.
    """

    class _ToLog:
        def write(self, text: str) -> int:
            if text.strip():
                log.debug("library: %s", text.strip())
            return len(text)

        def flush(self) -> None:
            pass

    with contextlib.redirect_stdout(_ToLog()):  # type: ignore[type-var]
        yield


# -- library fixes ------------------------------------------------------------------------


def fix_library(model: Any) -> None:
    """Work around chatterbox-tts 0.1.7 bugs that bite ttsd's environments. Idempotent.

    Turbo's ``norm_loudness`` multiplies the float32 reference clip by a NumPy float64
    gain; under NumPy 2's promotion rules (NEP 50) the clip becomes float64 and the
    speech tokenizer then fails on it ("expected scalar type Double but found Float"),
    so no voice can be conditioned. The wrapper hands back the clip's own dtype.
    """
    original = getattr(model, "norm_loudness", None)
    if original is None or getattr(original, "_ttsd_fixed", False):
        return

    def norm_loudness(wav: Any, sr: int, *args: Any, **kwargs: Any) -> Any:
        dtype = getattr(wav, "dtype", None)
        result = original(wav, sr, *args, **kwargs)
        return result.astype(dtype, copy=False) if dtype is not None else result

    norm_loudness._ttsd_fixed = True  # type: ignore[attr-defined]
    model.norm_loudness = norm_loudness


# -- precision -------------------------------------------------------------------------------


def apply_dtype(model: Any, dtype: str) -> None:
    """Cast the parts that run in ``dtype``: T3 and S3Gen's flow-matching estimator.

    The rest of S3Gen (its encoder, the HiFT vocoder with its STFT and pitch paths, the
    speech tokenizer) and the voice encoder stay in float32: they are a small share of
    the work and the vocoder's sound depends on their precision. The library's own
    ``solve_euler``/``basic_euler`` cast their inputs to the estimator's dtype.
    """
    if dtype == "float32":
        return
    import torch

    target = getattr(torch, dtype)
    model.t3.to(dtype=target)
    model.s3gen.flow.decoder.estimator.to(dtype=target)
