"""The Qwen-Image-Edit adapter, the tiny editor's conditioning and codecs, and the supervised warm start."""

from __future__ import annotations

import pytest
import torch

from rlpost.models.flow import PromptEmbeds, get_flow_adapter, tiny_flow_transformer
from rlpost.models.flow_edit import (
    PixelCodec,
    QwenEditPromptEncoder,
    QwenImageVAECodec,
    WordPromptEncoder,
    pretrain_editor,
    tokenize_words,
)

ADAPTER = get_flow_adapter("qwen_image_edit")


@pytest.fixture(scope="module")
def model():
    return tiny_flow_transformer("qwen_image_edit", seed=0, hidden_size=32, num_layers=1, num_heads=2).eval()


def cond_for(prompts, source, encoder=None):
    cond = (encoder or WordPromptEncoder(32))(prompts)
    cond.image_latents = source
    return cond


def test_per_sample_timesteps_equal_single_sample_calls(model):
    g = torch.Generator().manual_seed(0)
    x, src = torch.randn(3, 3, 8, 8, generator=g), torch.randn(3, 3, 8, 8, generator=g)
    t = torch.tensor([0.9, 0.5, 0.1])
    cond = cond_for(["move the square", "add a red circle in row 1, column 2", "remove it"], src)
    with torch.no_grad():
        batched = ADAPTER.velocity(model, x, t, cond)
        single = torch.cat([ADAPTER.velocity(model, x[i:i + 1], t[i:i + 1], cond.index([i])) for i in range(3)])
    assert batched.shape == (3, 3, 8, 8)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batched[0], ADAPTER.velocity(model, x[:1], t[1:2], cond.index([0]))[0])  # t matters


def test_output_depends_on_the_source_image_and_the_instruction(model):
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([0.5])
    with torch.no_grad():
        dark = ADAPTER.velocity(model, x, t, cond_for(["remove the square"], -torch.ones(1, 3, 8, 8)))
        bright = ADAPTER.velocity(model, x, t, cond_for(["remove the square"], torch.ones(1, 3, 8, 8)))
        other_text = ADAPTER.velocity(model, x, t, cond_for(["add a blue circle"], torch.ones(1, 3, 8, 8)))
    assert (dark - bright).abs().max() > 1e-3
    assert (bright - other_text).abs().max() > 1e-3
    with pytest.raises(ValueError, match="source image"):
        ADAPTER.velocity(model, x, t, WordPromptEncoder(32)(["no source"]))


def test_velocity_matches_the_pipeline_layout(model):
    # QwenImageEditPipeline: pack both latents, concatenate along the sequence, img_shapes lists both grids,
    # timestep = scheduler t / 1000 = flow time, keep the first L output tokens, unpack.
    from diffusers import QwenImageEditPipeline as P

    g = torch.Generator().manual_seed(1)
    b, c, h, w, hs, ws = 2, 3, 8, 6, 4, 8  # non-square target, source of another size
    x, src, t = torch.randn(b, c, h, w, generator=g), torch.randn(b, c, hs, ws, generator=g), torch.tensor([0.7, 0.2])
    cond = cond_for(["recolour the square in row 1, column 1 to red", "remove the circle"], src)
    with torch.no_grad():
        ours = ADAPTER.velocity(model, x, t, cond)
        tokens = torch.cat([P._pack_latents(x, b, c, h, w), P._pack_latents(src, b, c, hs, ws)], dim=1)
        out = model(hidden_states=tokens, encoder_hidden_states=cond.embeds, encoder_hidden_states_mask=cond.text_mask,
                    timestep=(1000 * t) / 1000, img_shapes=[[(1, h // 2, w // 2), (1, hs // 2, ws // 2)]] * b,
                    return_dict=False)[0]
        ref = P._unpack_latents(out[:, : (h // 2) * (w // 2)], h, w, vae_scale_factor=1)[:, :, 0]
    assert ours.shape == (b, c, h, w)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_text_padding_is_masked(model):
    x, src, t = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8), torch.tensor([0.4])
    prompt = ["move the circle in row 2, column 3 to row 1, column 1"]
    with torch.no_grad():
        short = ADAPTER.velocity(model, x, t, cond_for(prompt, src, WordPromptEncoder(32, max_words=16)))
        long = ADAPTER.velocity(model, x, t, cond_for(prompt, src, WordPromptEncoder(32, max_words=40)))
    torch.testing.assert_close(short, long, atol=1e-5, rtol=1e-5)


def test_word_encoder_shares_word_vectors_across_instructions():
    enc = WordPromptEncoder(16, max_words=12)
    a = enc(["recolour the square in row 1, column 2 to red"])
    b = WordPromptEncoder(16, max_words=12)(["recolour the circle in row 3, column 2 to red"])  # a fresh instance
    assert tokenize_words("row 1, column 2") == ["row", "1", "column", "2"]
    same = [0, 1, 3, 4, 6, 7, 8, 9]  # recolour the _ in row _ column 2 to red: same word at the same position
    torch.testing.assert_close(a.embeds[0, same], b.embeds[0, same])
    assert not torch.allclose(a.embeds[0, 2], b.embeds[0, 2])  # square vs circle
    assert a.text_mask[0].tolist() == [True] * 10 + [False] * 2 and a.pooled is None and a.embeds[0, 10:].abs().sum() == 0
    with pytest.raises(ValueError, match="max_words"):
        enc(["one two three four five six seven eight nine ten eleven twelve thirteen"])


def test_pixel_codec_round_trip():
    images = torch.rand(2, 3, 12, 12)
    latents = PixelCodec.encode(images)
    assert latents.min() >= -1 and latents.max() <= 1
    torch.testing.assert_close(PixelCodec.decode(latents), images)


def test_qwen_vae_codec_normalizes_with_latents_mean_and_std():
    from diffusers import AutoencoderKLQwenImage

    torch.manual_seed(0)
    mean, std = [0.1, 0.2, -0.1, 0.0], [1.5, 2.0, 1.0, 0.5]
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
                                 latents_mean=mean, latents_std=std).eval()
    codec = QwenImageVAECodec(vae)
    images = torch.rand(2, 3, 16, 16)
    z = codec.encode(images)
    assert z.shape == (2, 4, 8, 8)  # one frame, 2x spatial compression for this tiny VAE
    with torch.no_grad():
        raw = vae.encode(images.unsqueeze(2) * 2 - 1).latent_dist.mode()[:, :, 0]
    torch.testing.assert_close(z, (raw - torch.tensor(mean).view(1, 4, 1, 1)) / torch.tensor(std).view(1, 4, 1, 1))
    with torch.no_grad():
        decoded = ((vae.decode(raw.unsqueeze(2), return_dict=False)[0][:, :, 0] + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(codec.decode(z), decoded, atol=1e-5, rtol=1e-5)


class RecordingPipeline:
    """Records what QwenEditPromptEncoder asks of QwenImageEditPipeline.encode_prompt (a test double for the
    interface only: it returns embeddings whose length depends on the prompt, to exercise padding)."""

    def __init__(self):
        self.calls = []

    def encode_prompt(self, prompt, image=None):
        self.calls.append((prompt[0], None if image is None else image.size))
        n = len(prompt[0].split())
        return torch.full((1, n, 4), float(n)), None


def test_qwen_prompt_encoder_sees_instruction_and_source_image_and_pads():
    pipe = RecordingPipeline()
    enc = QwenEditPromptEncoder(pipe, condition_area=64 * 64)
    src = torch.rand(3, 12, 12)
    records = [{"prompt": "remove the red square", "source_image": src}, {"prompt": "add one", "source_image": src}]
    cond = enc(records)
    assert [c[0] for c in pipe.calls] == ["remove the red square", "add one"]
    assert pipe.calls[0][1] == (64, 64)  # the source image reaches the VL encoder, resized to the condition area
    assert cond.embeds.shape == (2, 4, 4) and cond.text_mask.int().tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    enc(records[:1])
    assert len(pipe.calls) == 2  # cached per (instruction, source pixels)
    enc([{"prompt": "remove the red square", "source_image": torch.zeros(3, 12, 12)}])
    assert len(pipe.calls) == 3  # another source image is another embedding


def test_pretrain_editor_fits_a_fixed_edit():
    model = tiny_flow_transformer("qwen_image_edit", seed=0, hidden_size=32, num_layers=1, num_heads=2)
    src = torch.zeros(3, 8, 8)
    target = src.clone()
    target[0, :4, :4] = 1.0  # paint the top-left quarter red
    records = [{"prompt": "paint it red", "source_image": src, "target_image": target}]
    losses = pretrain_editor(model, records, WordPromptEncoder(32), steps=60, batch_size=8, learning_rate=3e-3)
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    with pytest.raises(ValueError, match="target_image"):
        pretrain_editor(model, [{"prompt": "x", "source_image": src}], WordPromptEncoder(32), steps=1)
