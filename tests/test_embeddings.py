"""Textual inversion (vidiff.adapters.embeddings): new words trained as embedding rows, read and written in the
formats A1111 / ComfyUI / diffusers use, against diffusers' own `load_textual_inversion`."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from vidiff.adapters.embeddings import (NewTokens, add_new_tokens, load_embedding, merged_tokens, read_embedding,
                                        save_embedding)
from vidiff.models.encoding import encode_text

pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/conftest.py)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from vidiff.data.synthetic import write_shapes_dataset
    from vidiff.testing import make_tiny_video_pipeline

    root = tmp_path_factory.mktemp("embeddings")
    video = make_tiny_video_pipeline(root / "video")
    shapes = root / "shapes"
    write_shapes_dataset(shapes, 2, num_frames=2, size=16, seed=0, colors=["purple", "red"])
    return {"root": root, "video": video, "shapes": shapes}


def encoders(folder):
    from transformers import CLIPTextModel, CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder / "tokenizer")), CLIPTextModel.from_pretrained(str(folder / "text_encoder"))


def test_new_token_starts_from_its_words_and_leaves_other_prompts_alone(assets):
    tokenizer, encoder = encoders(assets["video"])
    before = encode_text(encoder, tokenizer, ["a red circle moving left"])
    pieces = len(tokenizer("purple", add_special_tokens=False)["input_ids"])
    assert pieces > 1  # the tiny tokenizer splits the word: what a new token is for
    module = add_new_tokens(tokenizer, encoder, {"purple": "red blue"})
    assert isinstance(module, NewTokens) and len(tokenizer("purple", add_special_tokens=False)["input_ids"]) == 1
    base = module.base.weight
    ids = tokenizer("red blue", add_special_tokens=False)["input_ids"]
    assert torch.allclose(module.new[0], base[ids].mean(dim=0))
    assert torch.equal(encode_text(encoder, tokenizer, ["a red circle moving left"]), before)
    with merged_tokens(encoder):
        plain = encoder.get_input_embeddings()
        assert isinstance(plain, torch.nn.Embedding) and encoder.config.vocab_size == base.shape[0] + 1
        assert torch.equal(plain.weight[-1], module.new[0])
    assert encoder.get_input_embeddings() is module
    for words, message in (({"red": "blue"}, "already one token"), ({"two words": "red"}, "one word"),
                           ({"mauve": ""}, "words the tokenizer knows")):
        with pytest.raises(ValueError, match=message):
            add_new_tokens(*encoders(assets["video"]), words)


def diffusers_prompt_embeds(folder, file, token, prompt):
    """The reference: diffusers' StableDiffusionPipeline.load_textual_inversion + encode_prompt."""
    from diffusers import StableDiffusionPipeline

    tokenizer, encoder = encoders(folder)
    pipe = StableDiffusionPipeline(vae=None, text_encoder=encoder, tokenizer=tokenizer, unet=None, scheduler=None,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.load_textual_inversion(str(file), token=token)
    return pipe.encode_prompt(prompt, "cpu", 1, False)[0]


@pytest.mark.parametrize("vectors", [1, 3])
def test_embedding_files_load_as_diffusers_loads_them(assets, tmp_path, vectors):
    tokenizer, encoder = encoders(assets["video"])
    rows = torch.randn(vectors, encoder.config.hidden_size, generator=torch.Generator().manual_seed(vectors))
    a1111 = save_embedding(tmp_path / "mauve.safetensors", rows, "mauve")
    assert load_file(str(a1111))["emb_params"].shape == (vectors, encoder.config.hidden_size)
    prompt = "a mauve circle moving left"
    reference = diffusers_prompt_embeds(assets["video"], a1111, "mauve", prompt)
    assert load_embedding(tokenizer, encoder, a1111) == ["mauve"]  # the word: the file's stem
    assert torch.allclose(encode_text(encoder, tokenizer, [prompt]), reference, atol=1e-6)

    # the other layouts of the same rows: diffusers' {token: vector} and A1111's weights-only .pt
    tokenizer, encoder = encoders(assets["video"])
    save_file({"<mauve>": rows}, str(tmp_path / "learned_embeds.safetensors"))
    assert load_embedding(tokenizer, encoder, tmp_path / "learned_embeds.safetensors") == ["<mauve>"]
    assert torch.allclose(encode_text(encoder, tokenizer, ["a <mauve> circle moving left"]), reference, atol=1e-6)
    torch.save({"string_to_param": {"*": rows}, "name": "x"}, tmp_path / "old.pt")
    tokenizer, encoder = encoders(assets["video"])
    assert load_embedding(tokenizer, encoder, tmp_path / "old.pt", word="mauve") == ["mauve"]
    assert torch.allclose(encode_text(encoder, tokenizer, [prompt]), reference, atol=1e-6)


def test_bad_embedding_files_are_one_line(assets, tmp_path):
    tokenizer, encoder = encoders(assets["video"])
    width = encoder.config.hidden_size
    save_file({"emb_params": torch.zeros(1, width + 1)}, str(tmp_path / "wide.safetensors"))
    save_file({"clip_l": torch.zeros(1, width), "clip_g": torch.zeros(1, 8)}, str(tmp_path / "xl.safetensors"))
    save_file({"emb_params": torch.zeros(1, width)}, str(tmp_path / "red.safetensors"))
    torch.save({"object": torch.nn.Linear(1, 1)}, tmp_path / "pickled.pt")
    for name, message in (("wide.safetensors", "another base model"), ("xl.safetensors", "SDXL"),
                          ("red.safetensors", "already a word"), ("pickled.pt", "weights-only")):
        with pytest.raises(ValueError, match=message) as info:
            load_embedding(tokenizer, encoder, tmp_path / name)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="not an embedding file"):
        read_embedding(tmp_path / "x.txt")


def run_config(out, assets, *overrides):
    from pathlib import Path

    from vidiff.config import load_config

    tiny = Path(__file__).resolve().parents[1] / "configs" / "train" / "tiny.yaml"
    return load_config(tiny, [f"model.pretrained={assets['video']}", f"data.manifest={assets['shapes']}",
                              f"output_dir={out}", "train.max_steps=4", "train.checkpoint_every=2",
                              "train.new_tokens={purple: red}", "train.learning_rate=0.05", "train.ema=true",
                              *overrides])


def last_checkpoint(out):
    from vidiff.training.checkpoints import list_checkpoints

    return load_file(str(list_checkpoints(out / "checkpoints")[-1] / "model.safetensors"))


@pytest.mark.parametrize("lora", [False, True])
def test_training_new_tokens_trains_the_row_alone_resumes_and_exports(assets, tmp_path, lora):
    from vidiff.pipelines import VideoPipeline
    from vidiff.training.trainer import train

    extra = ["train.trainable=lora", "train.lora.rank=2"] if lora else []
    assert train(run_config(tmp_path / "straight", assets, *extra)).step == 4
    weights = last_checkpoint(tmp_path / "straight")
    row_key = [k for k in weights if "new_tokens" in k]
    assert len(row_key) == 1 and not any(k.startswith("text_encoder.text_model") for k in weights)
    cfg = run_config(tmp_path / "resumed", assets, *extra)
    assert train(cfg, on_step=lambda step, row: step == 2).status == "interrupted"
    assert train(cfg, resume="auto").step == 4
    resumed = last_checkpoint(tmp_path / "resumed")
    assert weights.keys() == resumed.keys() and all(torch.equal(weights[k], resumed[k]) for k in weights)

    # the folder: a plain enlarged embedding whose other rows are the base's, the word one token
    folder = tmp_path / "straight" / "pipeline"
    pipe = VideoPipeline.from_pretrained(folder, device="cpu", dtype="fp32")
    base_tokenizer, base_encoder = encoders(assets["video"])
    trained = pipe.text_encoder.get_input_embeddings().weight
    old = base_encoder.get_input_embeddings().weight
    assert trained.shape[0] == old.shape[0] + 1 and torch.equal(trained[:-1], old)
    assert len(pipe.tokenizer("purple", add_special_tokens=False)["input_ids"]) == 1
    init = old[base_tokenizer("red", add_special_tokens=False)["input_ids"]].mean(dim=0)
    assert not torch.allclose(trained[-1], init)  # it trained
    # the A1111 file holds the folder's row, and loads into the base encoder to the same text embeddings
    file = tmp_path / "straight" / "embeddings" / "purple.safetensors"
    assert torch.equal(load_file(str(file))["emb_params"][0], trained[-1])
    load_embedding(base_tokenizer, base_encoder, file)
    prompt = ["a purple circle moving left"]
    assert torch.allclose(encode_text(base_encoder, base_tokenizer, prompt),
                          encode_text(pipe.text_encoder, pipe.tokenizer, prompt), atol=1e-6)


def test_new_token_config_errors(assets, tmp_path):
    from vidiff.config import ConfigError
    from vidiff.training.preflight import check_run

    for overrides, message in ((["train.new_tokens={red: blue}"], "already one token"),
                               (["train.new_tokens={purple: red}", "train.train_text_encoder=true"], "set one of"),
                               (["train.new_tokens=[purple]"], "expected mapping of str to str")):
        with pytest.raises(ConfigError, match=message):
            check_run(run_config(tmp_path / "x", assets, *overrides))


def test_generate_with_embedding(assets, tmp_path, capsys):
    from vidiff.cli import main

    tokenizer, encoder = encoders(assets["video"])
    file = save_embedding(tmp_path / "mauve.safetensors", torch.randn(2, encoder.config.hidden_size), "mauve")
    base = ["generate", "--model", str(assets["video"]), "--num-frames", "2", "--height", "16", "--width", "16",
            "--steps", "2", "--seed", "1", "--quiet"]
    assert main(base + ["--prompt", "a mauve circle", "--embedding", str(file), "--out", str(tmp_path / "a.mp4")]) == 0
    assert json.loads((tmp_path / "a.json").read_text())["embeddings"] == [str(file)]
    assert main(base + ["--prompt", "a lilac circle", "--embedding", f"{file}:lilac", "--out", str(tmp_path / "b.mp4")]) == 0
    capsys.readouterr()
    assert main(base + ["--prompt", "x", "--embedding", str(tmp_path / "none.safetensors"),
                        "--out", str(tmp_path / "c.mp4")]) == 2
    err = capsys.readouterr().err.strip()
    assert "none.safetensors is not a file" in err and len(err.splitlines()) == 1
