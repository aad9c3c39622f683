"""Model adapters: build a diffusers pipeline (real, tiny or meta), name its blocks and sub-layers, sample."""
from models.registry import MODELS, ModelPreset, get_preset

__all__ = ["MODELS", "ModelPreset", "get_preset", "get_adapter"]


def get_adapter(name: str):
    """The adapter for a registered model name (imports torch and diffusers lazily)."""
    from models.base import adapter_for

    return adapter_for(get_preset(name))
