"""CLIP's towers as encoders (tireid_core/models/clip.py) and CLIP's BPE tokenizer behind the common interface."""
import pytest
import torch

from tireid_core.data.tokenizers import HFTokenizer
from tireid_core.models.clip import clip_vit_b16_config, create_clip, load_clip_model


def test_towers_give_clips_own_global_embeddings(tiny_clip_dir):
    from transformers import CLIPModel

    image_encoder, text_encoder = create_clip(str(tiny_clip_dir), image_size=(48, 16))
    clip = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    images = torch.randn(2, 3, 48, 16, generator=torch.Generator().manual_seed(0))
    tokenizer = HFTokenizer(str(tiny_clip_dir))
    ids, mask = tokenizer.encode_batch(["a man in a red shirt", "a woman with long hair, black shoes and a bag"], 20)
    with torch.no_grad():
        tokens = image_encoder.eval()(images)
        words = text_encoder.eval()(ids, mask)
        own_image = clip.get_image_features(pixel_values=images, interpolate_pos_encoding=True).pooler_output
        own_text = clip.get_text_features(input_ids=ids, attention_mask=mask.long()).pooler_output
    assert tokens.shape == (2, 1 + 12 * 4, 16) and image_encoder.grid == (12, 4)
    assert torch.allclose(tokens[:, 0], own_image, atol=1e-5)  # CLS through post-LayerNorm and projection
    eos = text_encoder.eos_index(mask)
    assert torch.allclose(words[torch.arange(2), eos], own_text, atol=1e-5)  # end of text through the projection
    assert (ids[torch.arange(2), eos] == tokenizer.tokenizer.eos_token_id).all()


def test_position_table_is_resized_only_for_other_shapes(tiny_clip_dir):
    from transformers import CLIPModel

    clip = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    square, _ = create_clip(str(tiny_clip_dir), image_size=(32, 32))  # the table's own 8x8 grid
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        plain = clip.vision_model(pixel_values=images).last_hidden_state  # no interpolation at all
        assert torch.allclose(square.eval()(images), clip.visual_projection(clip.vision_model.post_layernorm(plain)),
                              atol=1e-5)
    with pytest.raises(ValueError, match="built for"):
        square(torch.randn(1, 3, 48, 16))
    with pytest.raises(ValueError, match="whole number of 4-pixel patches"):
        create_clip(str(tiny_clip_dir), image_size=(50, 16))


def test_captions_longer_than_clips_context_are_refused(tiny_clip_dir):
    _, text_encoder = create_clip(str(tiny_clip_dir), image_size=(48, 16))
    with pytest.raises(ValueError, match="exceed CLIP's 32 positions"):
        text_encoder(torch.zeros(1, 40, dtype=torch.long), torch.ones(1, 40, dtype=torch.bool))


def test_random_init_keeps_the_architecture(tiny_clip_dir):
    trained, _ = create_clip(str(tiny_clip_dir), image_size=(48, 16))
    fresh, _ = create_clip(str(tiny_clip_dir), pretrained=False, image_size=(48, 16))
    a, b = trained.state_dict(), fresh.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert not torch.equal(a["projection.weight"], b["projection.weight"])


def test_vit_b16_is_known_offline(offline, monkeypatch):
    config = clip_vit_b16_config()
    v, t = config.vision_config, config.text_config
    assert (v.hidden_size, v.num_hidden_layers, v.patch_size, v.image_size) == (768, 12, 16, 224)
    assert (t.hidden_size, t.num_hidden_layers, t.vocab_size, t.max_position_embeddings) == (512, 12, 49408, 77)
    assert config.projection_dim == 512
    import transformers

    built = []
    monkeypatch.setattr(transformers, "CLIPModel", lambda cfg: built.append(cfg) or cfg)
    load_clip_model("openai/clip-vit-base-patch16", pretrained=False)  # nothing cached: the published sizes
    assert built and built[0].vision_config.patch_size == 16


def test_missing_checkpoint_says_how_to_provide_it(offline, tmp_path):
    with pytest.raises(RuntimeError, match="without internet access"):
        create_clip(str(tmp_path / "no-clip"), image_size=(48, 16))


def test_clip_tokenizer_behind_the_common_interface(tiny_clip_dir):
    tokenizer = HFTokenizer(str(tiny_clip_dir))
    hf = tokenizer.tokenizer
    ids = tokenizer.encode("A man; red shirt.")
    assert ids[0] == hf.bos_token_id and ids[-1] == hf.eos_token_id
    assert hf.eos_token_id not in ids[1:-1], "every character has a token: ';' is not unknown"
    batch, mask = tokenizer.encode_batch(["a man in a red shirt with black pants and white shoes"], max_len=6)
    assert mask.all() and batch[0, -1] == hf.eos_token_id  # cut to 6 tokens, end of text kept last
