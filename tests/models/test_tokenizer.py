from hf_cxr_diffusion.models.tokenizer import CLIP_VOCAB_SIZE, clip_vocab_and_merges


def test_vocab_has_clip_size_and_specials():
    vocab, merges = clip_vocab_and_merges()
    assert len(vocab) == CLIP_VOCAB_SIZE == 49408
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert len(merges) == 48894 and merges[0] == ("i", "n")


def test_known_strings_give_standard_clip_ids(clip_tokenizer):
    # ids of openai/clip-vit-large-patch14 (Stable Diffusion 1.x) for these strings
    assert clip_tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert clip_tokenizer("chest").input_ids == [49406, 10563, 49407]
    assert clip_tokenizer.decode(clip_tokenizer("Pleural Effusion").input_ids, skip_special_tokens=True) == "pleural effusion"


def test_truncates_at_77(clip_tokenizer):
    ids = clip_tokenizer("lung " * 200, truncation=True, max_length=clip_tokenizer.model_max_length).input_ids
    assert clip_tokenizer.model_max_length == 77
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 49407
    padded = clip_tokenizer("lung", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[2:] == [49407] * 75


def test_saved_tokenizer_round_trips(tmp_path, clip_tokenizer):
    from transformers import CLIPTokenizer

    clip_tokenizer.save_pretrained(tmp_path)
    again = CLIPTokenizer.from_pretrained(tmp_path)
    text = "Chest X-ray of a subject with Pleural Effusion, Cardiomegaly"
    assert again(text).input_ids == clip_tokenizer(text).input_ids


def test_disk_cache_gives_the_same_tokenizer(tmp_path, monkeypatch, clip_tokenizer):
    from hf_cxr_diffusion.models import tokenizer as tok

    monkeypatch.setenv("HF_CXR_DIFFUSION_CACHE", str(tmp_path))
    tok.cached_clip_tokenizer.cache_clear()
    try:
        first = tok.cached_clip_tokenizer()
        assert (tmp_path / "clip-tokenizer" / "tokenizer_config.json").is_file()
        tok.cached_clip_tokenizer.cache_clear()
        second = tok.cached_clip_tokenizer()  # loaded from disk this time
        text = "age:54, gender:F, findings:Edema"
        assert first(text).input_ids == second(text).input_ids == clip_tokenizer(text).input_ids
    finally:
        tok.cached_clip_tokenizer.cache_clear()
