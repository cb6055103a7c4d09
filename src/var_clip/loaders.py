"""LoRA adapters for the VAR-CLIP transformer, with diffusers' pipeline API.

The transformer is a diffusers ``PeftAdapterMixin`` model (``add_adapter``, ``set_adapter``, ``disable_adapters``,
``save_lora_adapter`` / ``load_lora_adapter``); :class:`VARCLIPLoraLoaderMixin` adds diffusers' pipeline-level API
(``load_lora_weights``, ``set_adapters``, ``fuse_lora`` / ``unfuse_lora``, ``unload_lora_weights``,
``save_lora_weights``) to :class:`VARCLIPPipeline` and, through it, to the inpainting and image-to-image pipelines.

Files follow diffusers' layout: one ``pytorch_lora_weights.safetensors`` whose keys are
``transformer.<module>.lora_A.weight`` / ``lora_B.weight`` and whose header holds the peft ``LoraConfig``
(``lora_adapter_metadata``, each key prefixed ``transformer.``), so rank, alpha and targets travel with the weights.
Only safetensors are read: a pickled adapter (``.bin``, ``torch.save``) is refused, whatever its suffix, because
unpickling runs code.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import safetensors.torch
import torch
from diffusers.loaders.lora_base import LoraBaseMixin
from diffusers.utils import logging

from .hub import is_pickle_file
from .utils.atomic import atomic_open

__all__ = ["LORA_WEIGHT_NAME", "VARCLIPLoraLoaderMixin", "lora_config", "lora_target_modules", "require_peft"]

logger = logging.get_logger(__name__)

#: diffusers' file name for LoRA weights (``LORA_WEIGHT_NAME_SAFE``); the only one read without `weight_name`.
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
LORA_METADATA_KEY = "lora_adapter_metadata"  # diffusers' header key for the adapter's LoraConfig
TRANSFORMER_PREFIX = "transformer"


def require_peft() -> None:
    """A one-line error when peft (the adapters' implementation) is missing."""
    from diffusers.utils import is_peft_available

    if not is_peft_available():
        raise ValueError("LoRA adapters need peft: pip install peft (or pip install 'var-clip[lora]')")


def lora_target_modules(transformer) -> list[str]:
    """The transformer's default LoRA targets: where the caption enters, and the attention projections of every block.

    - ``text_proj``: the pooled text embedding's projection to the width, i.e. the start token and every AdaLN's
      input. A word the text encoder never saw (split into pieces by its tokenizer) moves the pooled embedding only
      a little ("a huge red circle" vs "a red circle": cosine 0.98 on the default model); an adapter here can
      amplify that direction, so the rest of the model sees the new word clearly instead of having to bend for it.
      It costs rank × (E + D) parameters.
    - ``attn.mat_qkv`` (q, k, v in one matrix) and ``attn.proj``: next-scale prediction reads the condition and the
      coarser scales only through attention (the start token is the condition; a scale attends to every coarser
      one), so that is where a new concept changes what a scale draws, as LoRA's authors adapt q/k/v/o.
    - with token-level conditioning (``cross_attention_dim``) the cross-attention's ``to_q``, ``to_k``, ``to_v`` and
      ``proj``, which read the caption's words.

    The feed-forward and the AdaLN projections are left out (more parameters, and they act on every token whatever
    the prompt); name them with ``--lora_target_modules`` to adapt them too. peft matches a target against the end
    of each module name.
    """
    targets = ["text_proj", "attn.mat_qkv", "attn.proj"] if transformer.config.condition_type == "text" else \
        ["attn.mat_qkv", "attn.proj"]
    if transformer.config.cross_attention_dim:
        targets += ["cross_attn.to_q", "cross_attn.to_k", "cross_attn.to_v", "cross_attn.proj"]
    return targets


def lora_config(transformer, rank: int, alpha: float | None = None, dropout: float = 0.0,
                target_modules: Sequence[str] | None = None):
    """A peft ``LoraConfig`` for ``transformer``: rank ``rank``, scaling ``alpha / rank`` (alpha defaults to the rank,
    scaling 1), the default targets of :func:`lora_target_modules` unless given. ``lora_B`` starts at zero, so a new
    adapter leaves the model's outputs unchanged until trained."""
    require_peft()
    from peft import LoraConfig

    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"`rank` must be a positive int, got {rank!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1), got {dropout}")
    if alpha is not None and not alpha > 0:
        raise ValueError(f"`alpha` must be > 0, got {alpha}")
    return LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, lora_dropout=dropout,
                      target_modules=list(target_modules or lora_target_modules(transformer)))


def _local_lora_file(path: Path, weight_name: str | None) -> Path:
    """The safetensors file a local path names, or a ValueError that says why it is not one."""
    if path.is_dir():
        path = path / (weight_name or LORA_WEIGHT_NAME)
        if not path.is_file():
            pickled = sorted(p.name for p in path.parent.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
            found = f"; it holds {pickled}, which var-clip does not load (pickle)" if pickled else ""
            raise ValueError(f"no {path.name!r} in {str(path.parent)!r}{found}: pass the safetensors file, or its "
                             "folder with `weight_name`")
    if is_pickle_file(path):
        raise ValueError(f"{str(path)!r} is a pickled file: unpickling can run code, so var-clip loads LoRA weights "
                         "from safetensors only. Convert it where you trust it: "
                         "safetensors.torch.save_file(torch.load(path, weights_only=True), "
                         "'pytorch_lora_weights.safetensors')")
    return path


class VARCLIPLoraLoaderMixin(LoraBaseMixin):
    """diffusers' LoRA API for var-clip's text pipelines; adapters live on the ``transformer``.

    ``load_lora_weights(path_or_repo, adapter_name=...)`` adds an adapter (several can be loaded; the last one loaded
    is active), ``set_adapters([...], adapter_weights=[...])`` activates and weights them, ``fuse_lora(lora_scale=...)``
    merges the active ones into the weights (``unfuse_lora()`` subtracts them again), ``unload_lora_weights()``
    removes every adapter and leaves the base weights exactly as they were (when nothing is fused),
    ``save_lora_weights(folder, transformer_lora_layers=...)`` writes diffusers' file. ``disable_lora``,
    ``enable_lora``, ``delete_adapters``, ``get_active_adapters`` and ``get_list_adapters`` come from diffusers.
    """

    _lora_loadable_modules = [TRANSFORMER_PREFIX]
    transformer_name = TRANSFORMER_PREFIX

    @classmethod
    def lora_state_dict(cls, pretrained_model_name_or_path_or_dict: str | os.PathLike | Mapping[str, torch.Tensor],
                        weight_name: str | None = None, subfolder: str | None = None,
                        return_lora_metadata: bool = False, **hub_kwargs):
        """The tensors of a LoRA file (and, with ``return_lora_metadata``, its adapter metadata, or None).

        ``pretrained_model_name_or_path_or_dict``: a safetensors file, a folder holding ``weight_name`` (default
        ``pytorch_lora_weights.safetensors``), a Hub repo id (the file is downloaded with ``huggingface_hub``;
        ``revision``, ``token``, ``cache_dir``, ``local_files_only`` are passed on) or a state dict.
        """
        if isinstance(pretrained_model_name_or_path_or_dict, Mapping):
            state_dict, metadata = dict(pretrained_model_name_or_path_or_dict), None
        else:
            source = Path(pretrained_model_name_or_path_or_dict).expanduser()
            if subfolder:
                source_local = source / subfolder
            else:
                source_local = source
            if source_local.exists():
                path = _local_lora_file(source_local, weight_name)
            else:
                from huggingface_hub import hf_hub_download

                unknown = set(hub_kwargs) - {"revision", "token", "cache_dir", "local_files_only", "force_download"}
                if unknown:
                    raise ValueError(f"unexpected keyword arguments {sorted(unknown)}")
                path = Path(hf_hub_download(str(pretrained_model_name_or_path_or_dict),
                                            weight_name or LORA_WEIGHT_NAME, subfolder=subfolder, **hub_kwargs))
                path = _local_lora_file(path, None)
            try:
                state_dict = safetensors.torch.load_file(path, device="cpu")
                with safetensors.safe_open(path, framework="pt") as handle:
                    raw = (handle.metadata() or {}).get(LORA_METADATA_KEY)
            except safetensors.SafetensorError as error:
                raise ValueError(f"{str(path)!r} is not a readable safetensors file: {error}") from error
            metadata = json.loads(raw) if raw else None
        if not state_dict or not all("lora_A" in k or "lora_B" in k for k in state_dict):
            odd = [k for k in state_dict if "lora_A" not in k and "lora_B" not in k][:3]
            raise ValueError(f"not a LoRA file in diffusers' peft layout (keys `...lora_A.weight` / "
                             f"`...lora_B.weight`): {'it is empty' if not state_dict else f'found {odd}'}")
        return (state_dict, metadata) if return_lora_metadata else state_dict

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict, adapter_name: str | None = None,
                          hotswap: bool = False, **kwargs) -> None:
        """Load a LoRA file into the transformer as adapter ``adapter_name`` (default ``default_<n>``) and make it
        the active one. Keys outside ``transformer.`` are ignored with a warning, as in diffusers."""
        require_peft()
        if self.transformer is None:
            raise ValueError("this pipeline has no `transformer` to load LoRA weights into")
        state_dict, metadata = self.lora_state_dict(pretrained_model_name_or_path_or_dict, return_lora_metadata=True,
                                                    **kwargs)
        if not any(k.startswith(f"{TRANSFORMER_PREFIX}.") for k in state_dict):
            raise ValueError(f"no `{TRANSFORMER_PREFIX}.` keys in this LoRA file (found e.g. "
                             f"{next(iter(state_dict))!r}): var-clip adapters live on the transformer")
        with warnings.catch_warnings():  # a second named adapter is what set_adapters is for: peft's "Already
            # found a `peft_config`" warning about it says nothing the caller did not ask for
            warnings.filterwarnings("ignore", message="Already found a `peft_config`", category=UserWarning)
            self.transformer.load_lora_adapter(state_dict, prefix=TRANSFORMER_PREFIX, adapter_name=adapter_name,
                                               metadata=metadata, _pipeline=self, hotswap=hotswap)

    @classmethod
    def save_lora_weights(cls, save_directory: str | os.PathLike,
                          transformer_lora_layers: Mapping[str, torch.Tensor] | torch.nn.Module | None = None,
                          is_main_process: bool = True, weight_name: str | None = None,
                          transformer_lora_adapter_metadata: dict | None = None,
                          safe_serialization: bool = True) -> Path:
        """Write ``transformer_lora_layers`` (peft's ``get_peft_model_state_dict(transformer, adapter_name=...)``) as
        diffusers' ``pytorch_lora_weights.safetensors`` in ``save_directory``, atomically; returns the file.

        ``transformer_lora_adapter_metadata`` is the adapter's ``LoraConfig.to_dict()``; with it the file loads
        with the same rank, alpha and targets anywhere.
        """
        if not safe_serialization:
            raise ValueError("var-clip writes LoRA weights as safetensors only (`safe_serialization=True`)")
        if not transformer_lora_layers:
            raise ValueError("pass `transformer_lora_layers`, e.g. "
                             "peft.utils.get_peft_model_state_dict(pipe.transformer, adapter_name=...)")
        layers = transformer_lora_layers
        if isinstance(layers, torch.nn.Module):
            layers = layers.state_dict()
        tensors = {f"{TRANSFORMER_PREFIX}.{k}": v.detach().contiguous().cpu() for k, v in layers.items()}
        header = {"format": "pt"}
        if transformer_lora_adapter_metadata:
            packed = {f"{TRANSFORMER_PREFIX}.{k}": sorted(v) if isinstance(v, set) else v
                      for k, v in transformer_lora_adapter_metadata.items()}
            header[LORA_METADATA_KEY] = json.dumps(packed, indent=2, sort_keys=True, default=str)
        path = Path(save_directory) / (weight_name or LORA_WEIGHT_NAME)
        if is_main_process:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(path) as handle:
                handle.write(safetensors.torch.save(tensors, metadata=header))
        return path

    def save_lora_adapter_weights(self, save_directory: str | os.PathLike, adapter_name: str = "default",
                                  weight_name: str | None = None) -> Path:
        """Write one loaded or trained adapter of the transformer, with its config, as diffusers' LoRA file."""
        require_peft()
        from peft.utils import get_peft_model_state_dict

        configs = getattr(self.transformer, "peft_config", {})
        if adapter_name not in configs:
            raise ValueError(f"no adapter {adapter_name!r} on the transformer (it has {sorted(configs)})")
        layers = get_peft_model_state_dict(self.transformer, adapter_name=adapter_name)
        return self.save_lora_weights(save_directory, layers, weight_name=weight_name,
                                      transformer_lora_adapter_metadata=configs[adapter_name].to_dict())

    def fuse_lora(self, components: Sequence[str] = (TRANSFORMER_PREFIX,), lora_scale: float = 1.0,
                  safe_fusing: bool = False, adapter_names: list[str] | None = None, **kwargs) -> None:
        """Merge the active adapters (or ``adapter_names``), times ``lora_scale``, into the transformer's weights."""
        super().fuse_lora(components=list(components), lora_scale=lora_scale, safe_fusing=safe_fusing,
                          adapter_names=adapter_names, **kwargs)

    def unfuse_lora(self, components: Sequence[str] = (TRANSFORMER_PREFIX,), **kwargs) -> None:
        """Subtract what :meth:`fuse_lora` merged."""
        super().unfuse_lora(components=list(components), **kwargs)
