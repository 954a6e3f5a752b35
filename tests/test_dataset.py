"""The training dataset in the original's layout, the resolution buckets and the resumable epoch plan."""

from __future__ import annotations

import random

import pytest
import torch

from wan.testing.tiny_dataset import make_clip, make_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), {"square": (32, 32)}, clips_per_bucket=3)


def test_sample_shapes_values_and_audio_slice(data):
    from wan.data.dataset import TalkingVideoDataset

    ds = TalkingVideoDataset(data["square"], 32, 32, n_sample_frames=17)
    assert len(ds) == 3
    s = ds[(0, 123)]
    assert s["pixel_values"].shape == (17, 3, 32, 32)
    assert s["pixel_values"].min() >= -1 and s["pixel_values"].max() <= 1
    assert s["tgt_face_masks"].shape == (1, 17, 32, 32) and s["tgt_lip_masks"].shape == (1, 17, 32, 32)
    assert s["text_prompt"] == "The protagonist is talking"
    assert ds[(1, 0)]["text_prompt"] == "The protagonist is singing"
    # lips inside the face; masks are {0, 1}
    assert (s["tgt_lip_masks"] <= s["tgt_face_masks"]).all()
    assert set(s["tgt_face_masks"].unique().tolist()) <= {0.0, 1.0}
    # reference = the clip's first frame; inpainting keeps frame 0 only
    assert torch.equal(s["reference_image"], s["pixel_values"][0])
    assert (s["pixel_value_masks"][0] == 0).all() and (s["pixel_value_masks"][1:] == 1).all()
    assert torch.equal(s["masked_pixel_values"][0], s["pixel_values"][0]) and (s["masked_pixel_values"][1:] == 0).all()
    assert torch.allclose(s["clip_pixel_values"], (s["reference_image"].permute(1, 2, 0) * 0.5 + 0.5) * 255)
    # 17 frames at 25 fps of 16 kHz audio = 10880 samples (the original's int(start*sr):int(end*sr))
    assert s["fps"] == pytest.approx(25.0)
    assert s["vocal_waveform"].shape == (10880,)


def test_clip_start_is_random_and_seeded(data):
    from wan.data.dataset import TalkingVideoDataset

    ds = TalkingVideoDataset(data["square"], 32, 32, n_sample_frames=17)
    starts = set()
    for seed in range(12):
        a, b = ds[(0, seed)], ds[(0, seed)]
        assert torch.equal(a["pixel_values"], b["pixel_values"])  # same seed, same sample
        starts.add(int(a["tgt_face_masks"][0, 0].sum(0).argmax()))  # x of the moving square
    assert len(starts) > 2  # 24 frames, 17-frame clips: 8 possible starts
    random.seed(0)
    assert ds[0]["pixel_values"].shape[0] == 17  # the plain index uses the global random


def test_short_video_repeats_frames_and_missing_masks_are_ones(tmp_path):
    from wan.data.dataset import TalkingVideoDataset

    clip = make_clip(tmp_path / "square" / "dancing" / "00001", 9, 32, 32, seed=1, masks=False)
    s = TalkingVideoDataset([clip], 32, 32, n_sample_frames=17)[(0, 0)]
    assert s["pixel_values"].shape[0] == 17  # linspace over 9 frames repeats indices
    assert (s["tgt_face_masks"] == 1).all() and (s["tgt_lip_masks"] == 1).all()
    assert s["text_prompt"] == "The protagonist is simultaneously dancing and singing"


def test_fps_falls_back_to_frames_over_audio_duration(tmp_path):
    from wan.data.dataset import TalkingVideoDataset

    clip = make_clip(tmp_path / "square" / "speech" / "00001", 24, 32, 32, seed=0)
    (clip / "sub_clip.mp4").unlink()
    s = TalkingVideoDataset([clip], 32, 32, n_sample_frames=17)[(0, 0)]
    assert s["fps"] == pytest.approx(24 / (int(24 / 25 * 16000) / 16000))


def test_bad_inputs_are_value_errors(tmp_path, data):
    from wan.data.dataset import TalkingVideoDataset, prompt_for, read_clip_list

    with pytest.raises(ValueError, match="does not exist"):
        read_clip_list(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="singing"):
        prompt_for("/data/square/other/00001")
    with pytest.raises(ValueError, match="4k\\+1"):
        TalkingVideoDataset(data["square"], 32, 32, n_sample_frames=16)
    with pytest.raises(ValueError, match="multiple of 16"):
        TalkingVideoDataset(data["square"], 40, 32)


def test_epoch_plan_mixes_buckets_and_resumes():
    from wan.data.buckets import REC, VEC, PlanSampler, epoch_plan

    plan = epoch_plan([5, 3], seed=1, epoch=0)
    assert sorted(b for b, _, _ in plan) == [0] * 5 + [1] * 3
    assert sorted(i for b, i, _ in plan if b == 0) == list(range(5))
    assert [b for b, _, _ in plan] != [0] * 5 + [1] * 3 or [b for b, _, _ in epoch_plan([5, 3], 1, 1)] != [0] * 5 + [1] * 3
    assert epoch_plan([5, 3], 1, 0) == plan and epoch_plan([5, 3], 1, 1) != plan
    full = list(PlanSampler([5, 3], 1, 0))
    assert list(PlanSampler([5, 3], 1, 0, start=3)) == full[3:]
    r0, r1 = list(PlanSampler([5, 3], 1, 0, 0, 2)), list(PlanSampler([5, 3], 1, 0, 1, 2))
    assert len(r0) == len(r1) == 4 and set(r0).isdisjoint(r1)
    assert (REC.width, REC.height, VEC.width, VEC.height) == (832, 480, 480, 832)
    assert REC.list_file == "video_rec_path.txt"
