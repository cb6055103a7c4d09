"""Sample-quality metrics on folders of generated images: FID (`var-clip eval-fid`) and CLIP score
(`var-clip eval-clip-score`), computed with torchmetrics from weights the user supplies as local files."""

from .clip_score import compute_clip_score, load_clip
from .fid import compute_fid, load_inception
from .images import WeightsError, count_images, iter_image_batches

__all__ = ["WeightsError", "compute_clip_score", "compute_fid", "count_images", "iter_image_batches", "load_clip",
           "load_inception"]
