"""CLIP score (CLIPSIM): how well a clip's frames match its caption, by a transformers CLIP model.

CLIPSIM (Wu et al. 2021, GODIVA; the text-video metric of Make-A-Video and most text-to-video papers) is the CLIP
score of Hessel et al. 2021 averaged over frames: for each frame, 100 x max(cos(text embedding, image embedding),
0), then the mean over the clip's frames. Images go through the model's own image processor (the resize, centre
crop and normalisation it was trained with), texts through its tokenizer (truncated to its context length).
Papers mostly use ViT-B/32 (`openai/clip-vit-base-patch32`); numbers from different CLIP models do not compare.

References: Hessel et al. 2021 "CLIPScore: A Reference-free Evaluation Metric for Image Captioning"; Wu et al. 2021
"GODIVA: Generating Open-DomaIn Videos from nAtural Descriptions".
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

from vidiff.spec import is_hub_id
from vidiff.utils import quiet_libraries

SCORE_SCALE = 100.0  # CLIPScore's w (Hessel et al. use 2.5 on [0, 1]; video papers report 100 x cosine)


class ClipScorer:
    """A CLIP model with its tokenizer and image processor. `score(frames, caption)` is CLIPSIM;
    `image_embeddings(frames)` the unit-length image features (vbench's background consistency uses them)."""

    def __init__(self, model: CLIPModel, tokenizer, image_processor, device=None):
        self.device = torch.device(device or "cpu")
        self.model = model.to(self.device).eval()
        self.tokenizer, self.image_processor = tokenizer, image_processor

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, device=None) -> ClipScorer:
        """A CLIP folder (`save_pretrained`: model + tokenizer + preprocessor_config.json) or hub id; safetensors
        weights only. A ValueError names the source and what is wrong."""
        if not Path(source).exists() and not is_hub_id(str(source)):
            raise FileNotFoundError(f"--clip {source}: no such folder (and not a hub id such as "
                                    "openai/clip-vit-base-patch32)")
        try:
            with quiet_libraries():
                model = CLIPModel.from_pretrained(str(source), use_safetensors=True)
                tokenizer = AutoTokenizer.from_pretrained(str(source))
                processor = AutoImageProcessor.from_pretrained(str(source))
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"--clip {source}: cannot load a CLIP model, tokenizer and image processor "
                             f"({first[:200]})") from None
        return cls(model, tokenizer, processor, device)

    @torch.no_grad()
    def text_embeddings(self, captions: list[str]) -> torch.Tensor:
        """(n, d) unit-length text features."""
        tokens = self.tokenizer(list(captions), padding=True, truncation=True, return_tensors="pt").to(self.device)
        features = self.model.get_text_features(**tokens)
        features = getattr(features, "pooler_output", features)  # (transformers 5 may return an output object)
        return torch.nn.functional.normalize(features.float(), dim=-1)

    @torch.no_grad()
    def image_embeddings(self, frames, batch_size: int = 32) -> torch.Tensor:
        """(f, d) unit-length image features of uint8 frames (f, h, w, 3)."""
        frames = np.asarray(frames)
        out = []
        for start in range(0, len(frames), batch_size):
            pixels = self.image_processor(images=list(frames[start:start + batch_size]), return_tensors="pt")
            features = self.model.get_image_features(pixel_values=pixels["pixel_values"].to(self.device))
            features = getattr(features, "pooler_output", features)
            out.append(torch.nn.functional.normalize(features.float(), dim=-1))
        return torch.cat(out)

    def frame_scores(self, frames, caption: str) -> np.ndarray:
        """Per frame: 100 x max(cos(text, frame), 0)."""
        cosine = self.image_embeddings(frames) @ self.text_embeddings([caption])[0]
        return (SCORE_SCALE * cosine.clamp(min=0)).cpu().numpy().astype(np.float64)

    def score(self, frames, caption: str) -> float:
        """CLIPSIM of one clip: the mean over its frames of the per-frame CLIP score."""
        return float(self.frame_scores(frames, caption).mean())
