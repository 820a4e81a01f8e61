"""Video I/O, training datasets, synthetic shapes videos and the latent cache.

    read_video(path, num_frames=None, stride=None, fps=None, start=0, size=None, backend="auto") -> VideoClip
    write_video(path, frames, fps, format=None)        mp4 | gif | PNG frames folder | contact-sheet PNG
    write_contact_sheet(path, frames, cols=None)
    VideoDataset(manifest, num_frames, height, width, stride=1, fps=None, train=True, flip=False, ...)
    CachedLatentDataset(cache_dir)                      VAE latents + text embeddings written by `vidiff data cache`

Names are imported lazily so `import vidiff.data` does not pull in torch.
"""
from __future__ import annotations

from vidiff.utils import lazy_exports

_LAZY = {
    "VideoClip": "vidiff.data.video_io",
    "VideoInfo": "vidiff.data.video_io",
    "VideoReadError": "vidiff.data.video_io",
    "ClipTooShortError": "vidiff.data.video_io",
    "read_video": "vidiff.data.video_io",
    "read_frames": "vidiff.data.video_io",
    "read_image": "vidiff.data.video_io",
    "probe_video": "vidiff.data.video_io",
    "clip_indices": "vidiff.data.video_io",
    "write_video": "vidiff.data.video_io",
    "write_contact_sheet": "vidiff.data.video_io",
    "make_contact_sheet": "vidiff.data.video_io",
    "VideoDataset": "vidiff.data.datasets",
    "load_manifest": "vidiff.data.datasets",
    "collate": "vidiff.data.datasets",
    "CachedLatentDataset": "vidiff.data.cache",
    "build_latent_cache": "vidiff.data.cache",
}

__all__ = list(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
