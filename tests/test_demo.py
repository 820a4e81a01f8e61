"""The built-in demo models (vidiff/assets/demo, vidiff.demo): vocabulary and tokenizer, recorded checksums,
generation with the shipped weights, `vidiff generate` without --model, and the command `make demo` runs."""
from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path


from vidiff import demo
from vidiff.data.synthetic import COLORS, MOTIONS, SHAPES, caption

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = [caption(c, s, m) for c, s, m in itertools.product(COLORS, SHAPES, MOTIONS)]


def _train_demo():
    spec = importlib.util.spec_from_file_location("train_demo", ROOT / "tools" / "train_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------ vocabulary
def test_vocabulary_is_exactly_the_caption_words():
    words = {w for c in CAPTIONS for w in c.split()}
    assert sorted(demo.vocabulary()) == sorted(words)
    assert all(demo.unknown_words(c) == [] for c in CAPTIONS)


def test_unknown_words_message_is_one_line_listing_the_known_words():
    message = demo.unknown_words_message(["A Purple circle moving sideways", "a purple square"])
    assert demo.unknown_words(["A Purple circle moving sideways", "a purple square"]) == ["purple", "sideways"]
    assert "'purple', 'sideways'" in message and "\n" not in message
    assert all(f" {w}" in message for w in demo.vocabulary())
    assert demo.unknown_words_message("a RED circle moving right") is None


def test_tokenizer_spells_every_word_as_one_token(tmp_path):
    tokenizer = _train_demo().write_tokenizer(tmp_path, 16)
    for word in demo.vocabulary():
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        assert tokenizer.convert_ids_to_tokens(ids) == [word + "</w>"]
    # an unknown word becomes letter pieces (no unknown-token ids) and round-trips
    ids = tokenizer("a purple circle", add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids[1:-1] and tokenizer.decode(ids) == "a purple circle"


def test_learned_merges_rebuild_each_word():
    words = ["moving", "more", "red", "right"]
    merges = _train_demo().learn_merges(words)
    for word in words:  # replay the merges in order, as BPE does, on each word's letters
        pieces = [*word[:-1], word[-1] + "</w>"]
        for a, b in merges:
            i = 0
            while i < len(pieces) - 1:
                if (pieces[i], pieces[i + 1]) == (a, b):
                    pieces[i:i + 2] = [a + b]
                i += 1
        assert pieces == [word + "</w>"]
