from .multiscale_vq import MultiScaleVQModel, MultiScaleVQOutput
from .var_transformer import KVCache, VARTransformer2DModel, VARTransformerOutput

__all__ = ["MultiScaleVQModel", "MultiScaleVQOutput", "VARTransformer2DModel", "VARTransformerOutput", "KVCache"]
