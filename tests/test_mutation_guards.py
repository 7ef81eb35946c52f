"""Unit tests written to fail when one plausible bug is put into the code, without fixtures (tiny random models).

Each test names the bug it guards against (a mutation run found that no other unit test failed for it):

- frame selection must start at `num_frames == budget` (the reference's `N < budget` keeps every frame only below);
- DINO keeps a frame only when its score is strictly below the threshold;
- the full-resolution and the low-resolution frame budgets are inclusive bounds of the mixing band;
- the mixing query is the text after the placeholder;
- STC's forced per-chunk removal is rounded up;
- the 400-frame cap (`max_frames_after_selection`) is applied by the model, uniformly;
- `generate` uses the visual features (its first step is `forward`'s last row) and beam search / sampling do what their
  settings say;
- labels become -100 exactly at the expanded visual positions, whatever they held there.

The budgets are set per call (`compression_settings`) so that every boundary falls on a few frames. With the prompt
`[5, V, 7]` (3 tokens, 2 without the placeholder), the margin 16 and `max_context_length=319`, the frame-selection and
SVA budget is 300 tokens: 300 // 144 = 2 frames at full resolution, 300 // 64 = 4 at low resolution (also the DINO
trigger), and the splice budget is 301. Square 48x48 frames take 156 tokens at full resolution and 72 at low
resolution (rows plus newlines).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longvu_hf.modeling import compression as C
from longvu_hf.modeling import video_encoder

from tiny_model import TINY_VIDEO_TOKEN_ID, make_tiny_model, random_video_inputs

V = TINY_VIDEO_TOKEN_ID
PROMPT = [5, V, 7]
CONTEXT = 319  # select budget 300 (2 full-res frames, 4 low-res frames), splice budget 301
HIGH_FRAMES, LOW_FRAMES = 2, 4
KEEP_ALL = 1.5  # a DINO threshold above every score: selection, when it runs, keeps every frame


@pytest.fixture(scope="module")
def model():
    return make_tiny_model()


def report_for(model, num_frames, dino_threshold=None, duplicate_runs=1, seed=0, prompt=PROMPT, context=CONTEXT):
    settings = {"max_context_length": context}
    if dino_threshold is not None:
        settings["dino_threshold"] = dino_threshold
    inputs = random_video_inputs(num_frames, 48, 48, seed=seed, duplicate_runs=duplicate_runs)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([prompt]), **inputs, compression_settings=settings)
    return out.compression[0]


# ------------------------------------------------------------------------------------------------------------------
# Budgets: every boundary on both sides
# ------------------------------------------------------------------------------------------------------------------


def test_budget_arithmetic_of_the_test_setting():
    budget = C.visual_budget(CONTEXT, len(PROMPT), 16)
    assert budget == 300
    assert (C.frame_budget(budget, 144), C.frame_budget(budget, 64)) == (HIGH_FRAMES, LOW_FRAMES)


def test_resolution_flags_at_both_band_edges():
    budget = 300
    assert C.resolution_flags(HIGH_FRAMES - 1, budget, 144, 64) == (False, True)  # below: all full resolution
    assert C.resolution_flags(HIGH_FRAMES, budget, 144, 64) == (True, True)  # `N < full budget` is false: mix
    assert C.resolution_flags(LOW_FRAMES, budget, 144, 64) == (True, True)  # `N > low budget` is false: mix
    assert C.resolution_flags(LOW_FRAMES + 1, budget, 144, 64) == (False, False)
    # the same edges on the release defaults (8192 tokens, a 40-token prompt): 56 and 127 frames
    budget = C.visual_budget(8192, 40, 16)
    assert [C.resolution_flags(n, budget, 144, 64)[0] for n in (55, 56, 127, 128)] == [False, True, True, False]


def test_frame_selection_starts_at_the_budget(model):
    # 4 identical frames = the DINO trigger budget: selection runs and keeps only the window's middle frame.
    at = report_for(model, LOW_FRAMES, duplicate_runs=LOW_FRAMES)
    assert at["frame_selection_ran"] and at["kept_frame_indices"] == [LOW_FRAMES // 2]
    # one frame fewer: every frame is kept, duplicates included.
    below = report_for(model, LOW_FRAMES - 1, duplicate_runs=LOW_FRAMES - 1)
    assert not below["frame_selection_ran"] and below["kept_frame_indices"] == list(range(LOW_FRAMES - 1))


def test_full_resolution_band_edge(model):
    # frames == full-resolution budget: the mixing band; one frame is upgraded: floor((301 - 2*72) / (156 - 72)) = 1
    at = report_for(model, HIGH_FRAMES)
    assert at["path"] == "mix" and len(at["high_res_frame_indices"]) == 1
    assert sorted(at["tokens_per_frame"]) == [72, 156] and at["num_visual_tokens"] == 228
    # one frame fewer: full resolution, nothing to compress
    below = report_for(model, HIGH_FRAMES - 1)
    assert below["path"] == "none" and below["tokens_per_frame"] == [156] and below["high_res_frame_indices"] == [0]
    # one frame more: still mixing (floor((301 - 3*72) / 84) = 1)
    above = report_for(model, HIGH_FRAMES + 1)
    assert above["path"] == "mix" and sorted(above["tokens_per_frame"]) == [72, 72, 156]


def test_low_resolution_band_edge(model):
    # frames == low-resolution budget (selection runs and keeps all): low resolution, 4 x 72 = 288 <= 301 tokens
    at = report_for(model, LOW_FRAMES, dino_threshold=KEEP_ALL)
    assert at["kept_frame_indices"] == list(range(LOW_FRAMES))
    assert at["path"] == "none" and at["tokens_per_frame"] == [72] * LOW_FRAMES and at["high_res_frame_indices"] == []
    # one frame more: out of the band, frames stay at full resolution and STC cuts them to the budget
    above = report_for(model, LOW_FRAMES + 1, dino_threshold=KEEP_ALL)
    assert above["kept_frame_indices"] == list(range(LOW_FRAMES + 1))
    assert above["path"] == "stc" and above["high_res_frame_indices"] == list(range(LOW_FRAMES + 1))
    assert above["tokens_per_frame"][0] == 156 and above["num_visual_tokens"] <= 301  # the STC anchor is whole


# ------------------------------------------------------------------------------------------------------------------
# DINO threshold: strictly below keeps
# ------------------------------------------------------------------------------------------------------------------


def test_dino_score_equal_to_the_threshold_drops_the_frame():
    # the middle frame (index 2) is forced; 0.75 is not below 0.75, 0.74 is
    assert C.select_frames_in_window(torch.tensor([0.75, 0.75, 0.9, 0.74]), 0.75).tolist() == [2, 3]
    # features with exact scores: a, a, b, b with a ⟂ b give every frame the mean of (1, 1, 0, 0) = 0.5 exactly
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    window = torch.stack([a, a, b, b]).view(4, 1, 2)
    assert C.dino_window_scores(window).tolist() == [0.5] * 4
    assert C.select_frames(window, threshold=0.5, window_size=4, max_frames=400).indices.tolist() == [2]
    assert C.select_frames(window, threshold=0.5 + 1e-6, window_size=4, max_frames=400).indices.tolist() == [0, 1, 2, 3]


# ------------------------------------------------------------------------------------------------------------------
# The mixing query
# ------------------------------------------------------------------------------------------------------------------


def test_mixing_query_is_the_text_after_the_placeholder(model, monkeypatch):
    queries = []
    original = C.query_frame_scores

    def spy(frames, query):
        queries.append(query.detach().clone())
        return original(frames, query)

    monkeypatch.setattr(video_encoder.C, "query_frame_scores", spy)
    prompt = [5, 6, 9, V, 7, 8]  # text_len 6: a context of 322 gives the same 300-token budget
    report = report_for(model, HIGH_FRAMES, prompt=prompt, context=322)
    assert report["path"] == "mix" and len(queries) == 1
    with torch.no_grad():
        expected = model.get_input_embeddings()(torch.tensor([7, 8]))
    assert torch.equal(queries[0], expected)
    # the layout the budget and the query come from, for a left-padded batch: each row's own text after its video
    ids = torch.tensor([[0, 0, 5, V, 7, 8], [5, 6, 9, V, 10, 11]])
    layout = model.model._prompt_layout(ids, (ids != 0).long(), None, videos=True, count=2)
    assert [item.text_length for item in layout] == [4, 6]
    with torch.no_grad():
        assert torch.equal(layout[0].query, model.get_input_embeddings()(torch.tensor([7, 8])))
        assert torch.equal(layout[1].query, model.get_input_embeddings()(torch.tensor([10, 11])))


# ------------------------------------------------------------------------------------------------------------------
# STC forced truncation
# ------------------------------------------------------------------------------------------------------------------


def test_stc_forced_removal_is_rounded_up():
    # 2 chunks of 2 frames x 3 tokens, nothing alike (threshold 2: every token kept): 12 tokens for a budget of 9.
    frames = torch.arange(1, 13, dtype=torch.float32).view(4, 3, 1) * torch.tensor([1.0, -1.0])
    tokens, counts, force_remove = C.spatial_token_compression(frames, threshold=2.0, window_size=2, budget=9)
    assert force_remove == 2  # ceil((12 - 9) / 2 chunks); rounding down (1) would keep 10 and cut the tail to 9
    assert counts == [3, 1, 3, 1] and len(tokens) == 8
    expected_rows = [0, 1, 2, 3, 6, 7, 8, 9]  # each chunk loses its last 2 kept tokens
    assert torch.equal(tokens, frames.flatten(0, 1)[expected_rows])
    # an even excess: 12 tokens for a budget of 8 remove exactly 2 per chunk as well
    assert C.spatial_token_compression(frames, 2.0, 2, 8)[2] == 2


# ------------------------------------------------------------------------------------------------------------------
# The 400-frame cap, as the model applies it
# ------------------------------------------------------------------------------------------------------------------


def test_the_model_caps_surviving_frames_uniformly():
    model = make_tiny_model(max_frames_after_selection=3, dino_window_size=4)
    report = report_for(model, 7, dino_threshold=KEEP_ALL)  # 7 >= 4: selection runs, keeps all 7, the cap 3
    assert report["frame_selection_ran"]
    assert report["kept_frame_indices"] == [int(i * 7 / 3) for i in range(3)] == [0, 2, 4]


# ------------------------------------------------------------------------------------------------------------------
# generate depends on the video
# ------------------------------------------------------------------------------------------------------------------


def test_generate_first_step_is_forward_on_the_video(model):
    first_steps = []
    for level in (0, 255):  # a black and a white video: the tiny random towers see random noise as nearly alike
        inputs = {"input_ids": torch.tensor([PROMPT]), **random_video_inputs(2)}
        inputs["pixel_values_videos"] = torch.full_like(inputs["pixel_values_videos"], level)
        inputs["pixel_values_videos_dino"] = torch.full_like(inputs["pixel_values_videos_dino"], level)
        with torch.no_grad():
            last_row = model(**inputs).logits[0, -1]
        out = model.generate(**inputs, max_new_tokens=1, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        torch.testing.assert_close(out.logits[0][0], last_row, atol=1e-5, rtol=1e-5)
        assert out.sequences[0, -1] == out.logits[0][0].masked_fill(torch.arange(128) == V, -1e9).argmax()
        first_steps.append(out.logits[0][0])
    assert (first_steps[0] - first_steps[1]).abs().max() > 1e-3  # other pixels, other first-step logits


# ------------------------------------------------------------------------------------------------------------------
# Labels at the visual positions
# ------------------------------------------------------------------------------------------------------------------


def test_labels_become_ignore_exactly_at_visual_positions(model):
    ids = torch.tensor([[0, 0, 5, 6, V, 7, 8], [5, 9, 10, 11, V, 12, 13]])
    mask = (ids != 0).long()
    first, second = random_video_inputs(2, seed=1), random_video_inputs(3, 48, 48, seed=2)
    inputs = {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values_videos": torch.cat([first["pixel_values_videos"], second["pixel_values_videos"]]),
        "pixel_values_videos_dino": torch.cat([first["pixel_values_videos_dino"], second["pixel_values_videos_dino"]]),
        "video_num_frames": torch.tensor([2, 3]),
        "video_sizes": torch.cat([first["video_sizes"], second["video_sizes"]]),
    }
    labels = ids.clone()  # NOT -100 at the placeholders (nor at the padding)
    with torch.no_grad():
        out = model(**inputs, labels=labels)
    counts = [r["num_visual_tokens"] for r in out.compression]
    width = out.labels.shape[1]
    expected = []
    for row, count in zip(ids.tolist(), counts):
        real = [t for t in row if t != 0]
        place = real.index(V)
        values = real[:place] + [-100] * count + real[place + 1 :]
        expected.append([-100] * (width - len(values)) + values)  # left padding
    assert out.labels.tolist() == expected
    logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
    loss = F.cross_entropy(logits, torch.tensor(expected)[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, loss)

    # labels given for the expanded sequence, with real token ids everywhere: -100 at the visual positions only
    expanded_labels = torch.full_like(out.labels, 3)
    with torch.no_grad():
        again = model(**inputs, labels=expanded_labels)
    visual = torch.tensor(expected) == -100
    visual &= out.attention_mask.bool()
    assert again.labels[visual].eq(-100).all() and again.labels[~visual].eq(3).all()
    assert int(visual.sum()) == sum(counts)


# ------------------------------------------------------------------------------------------------------------------
# Beam search and sampling do what their settings say
# ------------------------------------------------------------------------------------------------------------------


def sequence_log_prob(model, inputs, sequence, num_new):
    """Sum of the log-probabilities `forward` gives the last `num_new` tokens of `sequence` (prompt + new tokens)."""
    with torch.no_grad():
        logits = model(**{**inputs, "input_ids": sequence.unsqueeze(0)}).logits[0]
    log_probs = torch.log_softmax(logits[-num_new - 1 : -1].float(), dim=-1)
    return log_probs.gather(1, sequence[-num_new:].unsqueeze(1)).sum()


def test_beam_search_returns_the_best_beams_with_their_scores(model):
    inputs = {"input_ids": torch.tensor([PROMPT]), **random_video_inputs(2, seed=3)}
    out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, num_beams=4, num_return_sequences=3,
                         do_sample=False, length_penalty=0.0, early_stopping=True, return_dict_in_generate=True,
                         output_scores=True)
    sequences = out.sequences
    assert sequences.shape == (3, len(PROMPT) + 3)
    assert (sequences[:, : len(PROMPT)] == torch.tensor(PROMPT)).all()
    assert len({tuple(s.tolist()) for s in sequences}) == 3  # distinct beams
    scores = out.sequences_scores
    assert (scores[:-1] >= scores[1:]).all()  # best first
    for sequence, score in zip(sequences, scores):  # each score is the beam's log-probability under `forward`
        torch.testing.assert_close(sequence_log_prob(model, inputs, sequence, 3), score, atol=1e-4, rtol=1e-4)
    greedy = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    one_beam = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, num_beams=1, do_sample=False)
    assert torch.equal(one_beam, greedy)


def test_sampling_is_seeded_and_honours_its_settings(model):
    inputs = {"input_ids": torch.tensor([PROMPT]), **random_video_inputs(2, seed=4)}
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=True, top_p=0.9, num_return_sequences=3)
    torch.manual_seed(0)
    first = model.generate(**inputs, **kwargs)
    torch.manual_seed(0)
    again = model.generate(**inputs, **kwargs)
    torch.manual_seed(1)
    other = model.generate(**inputs, **kwargs)
    assert first.shape == (3, len(PROMPT) + 6) and (first[:, : len(PROMPT)] == torch.tensor(PROMPT)).all()
    assert torch.equal(first, again)  # same seed, same samples
    assert not torch.equal(first, other)  # another seed, other samples
    assert len({tuple(s.tolist()) for s in first}) > 1  # the returned sequences are independent draws
    assert not (first[:, len(PROMPT) :] == V).any()  # the placeholder is never sampled
    greedy = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    torch.manual_seed(2)
    top1 = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=True, top_k=1)
    assert torch.equal(top1, greedy)  # top_k=1 leaves one candidate: sampling is greedy
