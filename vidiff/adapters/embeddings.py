"""Textual inversion: new words for the text encoder, trained as embedding rows, saved and loaded as the tools do.

A word the tokenizer does not know ("purple" for the demo's tokenizer) is split into character pieces, which
shifts every later word of the caption and gives the U-Net a text it never saw; no adapter on the U-Net alone
can teach it that word. Textual inversion (Gal et al. 2022) adds the word as one new token whose embedding row
is the only new parameter of the text encoder; trained together with a U-Net LoRA it is "pivotal tuning"
(kohya's and diffusers' advanced DreamBooth LoRA scripts).

`NewTokens` wraps the encoder's token embedding: the pretrained rows stay frozen, the new rows train (so weight
decay and EMA touch only them). A trained folder stores a plain, enlarged embedding (`merged_tokens`), so it loads
anywhere; `save_embedding` writes the new rows in A1111's `emb_params` form, which A1111, ComfyUI and diffusers'
`load_textual_inversion` read. `load_embedding` reads that form, diffusers' `{token: vector}` files and A1111's
`.pt` files (weights-only), with multi-vector embeddings expanded in the prompt as A1111 does.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from vidiff.models.encoding import EXPANSIONS
from vidiff.utils import save_safetensors_atomic

EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")


class NewTokens(nn.Module):
    """A token embedding with new rows: `base` (frozen) then `new` (trainable), ids in that order."""

    def __init__(self, base: nn.Embedding, new: torch.Tensor):
        super().__init__()
        self.base = base
        self.new = nn.Parameter(new.to(base.weight.dtype).clone())

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([self.base.weight, self.new])

    @property
    def num_embeddings(self) -> int:
        return self.base.num_embeddings + len(self.new)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


def _single_token(tokenizer, word: str) -> bool:
    return len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1


def check_new_words(tokenizer, words: dict[str, str], where: str = "train.new_tokens") -> None:
    """Each new word is one word the tokenizer splits (a known word needs no new token) and each init text has
    words the tokenizer reads; ValueError naming the word otherwise."""
    for word, init in words.items():
        if not word or any(c.isspace() for c in word):
            raise ValueError(f"{where}: {word!r} must be one word, without spaces")
        if _single_token(tokenizer, word):
            raise ValueError(f"{where}: {word!r} is already one token of the tokenizer; it needs no new token "
                             "(train the LoRA on it as it is, or pick a new word)")
        if not isinstance(init, str) or not tokenizer(init, add_special_tokens=False)["input_ids"]:
            raise ValueError(f"{where}: {word!r} starts from {init!r}, which must be words the tokenizer knows "
                             "(e.g. purple: red blue)")


def add_new_tokens(tokenizer, text_encoder, words: dict[str, str]) -> NewTokens:
    """Add `words` (new word -> the text whose token embeddings' mean it starts from) to the tokenizer and the
    text encoder; returns the encoder's new `NewTokens` embedding, whose `new` rows are the words' embeddings."""
    check_new_words(tokenizer, words)
    base = text_encoder.get_input_embeddings()
    init = []
    for text in words.values():
        ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], device=base.weight.device)
        init.append(base.weight.detach()[ids].mean(dim=0))
    return _extend(tokenizer, text_encoder, list(words), torch.stack(init))


def _extend(tokenizer, text_encoder, tokens: list[str], rows: torch.Tensor) -> NewTokens:
    base = text_encoder.get_input_embeddings()
    if isinstance(base, NewTokens):
        raise ValueError("the text encoder already has new tokens; merge them first (merged_tokens)")
    first = len(tokenizer)
    if first != base.num_embeddings:
        raise ValueError(f"the tokenizer has {first} tokens but the text encoder {base.num_embeddings} embeddings; "
                         "they must match to add words")
    if tokenizer.add_tokens(tokens) != len(tokens):
        raise ValueError(f"the tokenizer already has some of {tokens}")
    module = NewTokens(base, rows.to(base.weight.device))
    text_encoder.set_input_embeddings(module)
    return module


def new_token_rows(tokenizer, text_encoder) -> dict[str, torch.Tensor]:
    """word -> its embedding row, for every token added to `tokenizer` after its base vocabulary."""
    module = text_encoder.get_input_embeddings()
    if not isinstance(module, NewTokens):
        return {}
    first = module.base.num_embeddings
    ids = {tokenizer.convert_ids_to_tokens(first + i): i for i in range(len(module.new))}
    return {token: module.new.detach()[i] for token, i in ids.items()}


@contextlib.contextmanager
def merged_tokens(text_encoder):
    """The text encoder with its new rows folded into one plain `nn.Embedding` (and `vocab_size` raised), as a
    saved folder must hold it; the trainable form comes back afterwards."""
    module = text_encoder.get_input_embeddings()
    if not isinstance(module, NewTokens):
        yield text_encoder
        return
    old_size = text_encoder.config.vocab_size
    text_encoder.set_input_embeddings(_as_plain(module))
    text_encoder.config.vocab_size = module.num_embeddings
    try:
        yield text_encoder
    finally:
        text_encoder.set_input_embeddings(module)
        text_encoder.config.vocab_size = old_size


def _as_plain(module: NewTokens) -> nn.Embedding:
    plain = nn.Embedding(module.num_embeddings, module.base.embedding_dim, device=module.new.device,
                         dtype=module.new.dtype)
    with torch.no_grad():
        plain.weight.copy_(module.weight)
    return plain.requires_grad_(module.base.weight.requires_grad)


def save_embedding(path, vectors: torch.Tensor, word: str) -> Path:
    """One word's embedding, `(n, D)`, as A1111 writes it (`emb_params`), atomically; the word is in the metadata
    (A1111 and ComfyUI name it after the file: `embedding:<stem>`)."""
    vectors = vectors.detach().float().cpu().reshape(-1, vectors.shape[-1]).contiguous()
    save_safetensors_atomic({"emb_params": vectors}, path, metadata={"name": word, "format": "a1111"})
    return Path(path)


def read_embedding(path) -> dict[str, torch.Tensor]:
    """A textual-inversion file -> {word or "": `(n, D)` rows}: A1111's `emb_params` / `string_to_param` (the
    word: "" , named by the caller), diffusers' `{token: vector}`. `.pt` / `.bin` are read weights-only."""
    path = Path(path)
    if path.suffix not in EMBEDDING_SUFFIXES:
        raise ValueError(f"{path} is not an embedding file ({', '.join(EMBEDDING_SUFFIXES)})")
    if path.suffix == ".safetensors":
        data = load_file(str(path))
    else:
        try:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # (an unpickler refusal or a broken file)
            raise ValueError(f"{path} is not a weights-only embedding file ({type(e).__name__}); convert it to "
                             ".safetensors") from None
    if isinstance(data, dict) and "string_to_param" in data:  # A1111 .pt
        data = {"emb_params": next(iter(data["string_to_param"].values()))}
    if not isinstance(data, dict) or not data or not all(torch.is_tensor(v) for v in data.values()):
        raise ValueError(f"{path} holds no embedding tensors")
    if {"clip_l", "clip_g"} & set(data):
        raise ValueError(f"{path} is an SDXL embedding (clip_l / clip_g); vidiff's models use one SD 1.x/2.x text "
                         "encoder")
    if "emb_params" in data:
        return {"": data["emb_params"].reshape(-1, data["emb_params"].shape[-1])}
    return {word: v.reshape(-1, v.shape[-1]) for word, v in data.items()}


def load_embedding(tokenizer, text_encoder, path, word: str | None = None) -> list[str]:
    """Add the embedding(s) of `path` to the tokenizer and text encoder (frozen: a plain, enlarged embedding);
    `word` names an A1111 embedding (default: the file's stem). A multi-vector word becomes tokens `word`,
    `word_1`, ... and prompts naming `word` get all of them (`vidiff.models.encoding.expand_prompt`). Returns the
    words added."""
    found = read_embedding(path)
    width = text_encoder.get_input_embeddings().embedding_dim
    named = {(name or word or Path(path).stem): rows for name, rows in found.items()}
    if word is not None and len(named) == 1:
        named = {word: next(iter(named.values()))}
    tokens, rows, expansions = [], [], {}
    for name, vectors in named.items():
        if vectors.shape[-1] != width:
            raise ValueError(f"{path}: {name!r} has {vectors.shape[-1]}-wide vectors, the text encoder's are {width} "
                             "wide (an embedding for another base model)")
        if _single_token(tokenizer, name) or name in tokenizer.get_vocab():
            raise ValueError(f"{path}: {name!r} is already a word of the tokenizer; name the embedding another "
                             "way (FILE:WORD)")
        names = [name] + [f"{name}_{i}" for i in range(1, len(vectors))]
        tokens += names
        rows.append(vectors)
        if len(names) > 1:
            expansions[name] = " ".join(names)
    module = _extend(tokenizer, text_encoder, tokens, torch.cat(rows))
    text_encoder.set_input_embeddings(_as_plain(module).requires_grad_(False))
    text_encoder.config.vocab_size = module.num_embeddings
    setattr(tokenizer, EXPANSIONS, {**getattr(tokenizer, EXPANSIONS, {}), **expansions})
    return list(named)
