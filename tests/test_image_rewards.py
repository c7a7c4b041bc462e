"""Image reward modules: input forms, edge cases (None image, no colour word, bad shapes) and the CLIP-family scorers
on a tiny random CLIPModel saved to disk (no download)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlpost.rewards.image import ClipScore, HPSv2, ImageRewardScore, ImageTarget, PickScore, PromptColor, \
    to_image_tensor


def solid(rgb, size=4):
    return torch.tensor(rgb, dtype=torch.float32)[:, None, None].expand(3, size, size).clone()


# ----------------------------------------------------------------------------- to_image_tensor


@pytest.mark.parametrize(
    "image, expected",
    [
        (solid((1.0, 0.5, 0.0)), solid((1.0, 0.5, 0.0))),  # CHW float passes through
        (solid((1.0, 0.5, 0.0)).permute(1, 2, 0).numpy(), solid((1.0, 0.5, 0.0))),  # HWC numpy
        (np.full((4, 4, 3), 255, dtype=np.uint8), solid((1.0, 1.0, 1.0))),  # uint8 / 255
        (torch.full((4, 4), 0.25), solid((0.25, 0.25, 0.25))),  # grayscale -> 3 channels
        (torch.full((3, 4, 4), 2.0), solid((1.0, 1.0, 1.0))),  # out-of-range floats clamp
    ],
    ids=["chw", "hwc-numpy", "uint8", "gray", "clamp"],
)
def test_to_image_tensor_forms(image, expected):
    torch.testing.assert_close(to_image_tensor(image), expected)


def test_to_image_tensor_reads_pil_and_rejects_bad_shapes():
    from PIL import Image

    pil = Image.fromarray(np.zeros((2, 3, 3), dtype=np.uint8))
    assert to_image_tensor(pil).shape == (3, 2, 3)
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        to_image_tensor(torch.zeros(5, 4, 4))


# ----------------------------------------------------------------------------- offline rewards


def test_image_target_edge_cases():
    reward = ImageTarget(target_color=(1.0, 0.0, 0.0))
    out = reward({"image": [solid((1.0, 0.0, 0.0)), solid((0.0, 1.0, 1.0)), solid((1.0, 1.0, 0.0)), None]})
    # exact match -> 0; opposite on every channel -> -mean(1,1,1) = -1; one channel off by 1 -> -1/3; None -> None
    assert out.scores[0] == 0.0 and out.scores[1] == -1.0 and out.scores[3] is None
    assert out.scores[2] == pytest.approx(-1 / 3, abs=1e-7)
    with pytest.raises(ValueError, match="target_color"):
        ImageTarget(target_color=(2.0, 0.0, 0.0))


def test_image_target_resizes_a_target_image():
    target = torch.zeros(3, 2, 2)
    target[0] = 1.0  # a red 2x2 image, compared with 4x4 images (bilinear resize keeps a constant image constant)
    reward = ImageTarget(target_image=target)
    assert reward({"image": [solid((1.0, 0.0, 0.0))]}).scores == [0.0]
    assert reward({"image": [solid((0.0, 0.0, 0.0))]}).scores[0] == pytest.approx(-1 / 3, abs=1e-7)


@pytest.mark.parametrize(
    "prompt, image, expected",
    [
        ("a red square", solid((1.0, 0.0, 0.0)), 0.0),
        ("A RED square", solid((1.0, 0.0, 0.0)), 0.0),  # case-insensitive
        ("blue, please", solid((0.0, 0.0, 0.0)), -1 / 3),  # word followed by punctuation; 1 of 3 channels off by 1
        ("a reddish square", solid((1.0, 0.0, 0.0)), None),  # no whole colour word
        ("", solid((1.0, 0.0, 0.0)), None),  # empty prompt
        ("a red square", None, None),  # no image
    ],
)
def test_prompt_color_table(prompt, image, expected):
    score = PromptColor()({"image": [image], "prompt": [prompt]}).scores[0]
    assert score == (None if expected is None else pytest.approx(expected, abs=1e-7))


# ----------------------------------------------------------------------------- CLIP family


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    from rlpost.models import tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny-clip")
    config = CLIPConfig(
        text_config=dict(vocab_size=512, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(path)
    tiny_tokenizer(vocab_size=512, cache_dir=path / "cache").save_pretrained(path)
    return str(path)


def test_clip_score_is_a_cosine_and_independent_of_batch_position(tiny_clip_dir):
    reward = ClipScore(tiny_clip_dir, batch_size=2)
    images = [torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    prompts = ["a red cat", "a dog", "a red cat"]
    out = reward({"image": images + [None], "prompt": prompts + ["x"]})
    assert out.scores[3] is None
    assert all(-1.0 <= s <= 1.0 for s in out.scores[:3])
    # the same (image, prompt) scored alone, in another batch, gives the same score
    alone = reward({"image": [images[2]], "prompt": [prompts[2]]}).scores[0]
    assert alone == pytest.approx(out.scores[2], abs=1e-5)
    # and the score depends on the image (a different image, same prompt -> different score)
    assert out.scores[0] != pytest.approx(out.scores[2], abs=1e-6)


def test_clip_score_scale_and_clamp(tiny_clip_dir):
    batch = {"image": [torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))], "prompt": ["a red cat"]}
    raw = ClipScore(tiny_clip_dir)(batch).scores[0]
    scaled = ClipScore(tiny_clip_dir, scale=2.5, clamp_min=0.0)(batch).scores[0]
    # CLIPScore = 2.5 * max(cos, 0)
    assert scaled == pytest.approx(2.5 * max(raw, 0.0), abs=1e-6)


def test_pickscore_is_the_logit_scaled_cosine(tiny_clip_dir):
    from transformers import CLIPModel

    batch = {"image": [torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1))], "prompt": ["a dog"]}
    cosine = ClipScore(tiny_clip_dir)(batch).scores[0]
    logit_scale = CLIPModel.from_pretrained(tiny_clip_dir).logit_scale.exp().item()  # CLIP init: 1/0.07
    assert PickScore(tiny_clip_dir)(batch).scores[0] == pytest.approx(logit_scale * cosine, rel=1e-5)


@pytest.mark.parametrize("cls, package", [(HPSv2, "open_clip_torch"), (ImageRewardScore, "image-reward")])
def test_learned_rewards_without_their_package_say_what_to_install(cls, package):
    pytest.importorskip("torch")
    try:
        cls("missing.pt")
    except ImportError as error:
        assert package in str(error)
    except (FileNotFoundError, OSError, RuntimeError):
        pass  # the package is installed here; only the weights are missing
    else:
        pytest.fail(f"{cls.__name__} built without weights")
