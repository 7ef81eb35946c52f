"""The web demo (`longvu_hf.web_demo`): the request logic on the tiny random model, the page's safety on a public
server (issue 22), the Space's files, and the page in a real browser.

The request-logic tests need only the [dev] extra. The server tests need Gradio; the browser test needs Gradio,
Playwright and Debian's `chromium` (`.ci/run` installs them in `.venv-web`); without them they are skipped with the
reason (LONGVU_REQUIRE_BROWSER=1 makes that a failure, for CI). Set LONGVU_WEB_SCREENSHOT to a .png path to keep the
screenshot the browser test takes (the README's picture, docs/images/web_demo.png, comes from there).
"""

from __future__ import annotations

import configparser
import contextlib
import dataclasses
import functools
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av", reason="the web demo tests write their clips with PyAV (pip install av)")

from longvu_hf import media_inputs, web_demo
from longvu_hf.cli import write_demo_clip
from longvu_hf.media_inputs import InputPolicy
from longvu_hf.web_demo import (
    ERROR_MARK,
    EXAMPLE_NAME,
    AskOptions,
    Conversation,
    DemoInputError,
    PageFolders,
    has_random_weights,
    load_answerer,
    public_message,
    reachable_from_other_machines,
)

QUESTION = "What is happening in this video ?"
REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def answerer():
    # The CLI's tiny random model, offline. Local paths on: most tests give their clips as paths (the public
    # policy is tried by the tests that use the `public` fixture).
    answerer = load_answerer(None, allow_local_paths=True)
    yield answerer
    answerer.close()


@pytest.fixture
def public(answerer):
    """The answerer under the public page's policy for one test."""
    saved = answerer.policy
    answerer.policy = InputPolicy.public_page()
    yield answerer
    answerer.policy = saved


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    # 12 s at 1 fps: 12 frames, a few seconds per request on 2 CPU cores.
    return write_demo_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", seconds=12, fps=2)


def write_audio_only(path: Path) -> Path:
    """An mp4 holding one AAC stream and no video."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        for _ in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_playlist(path: Path, target: Path) -> Path:
    """An HLS playlist (about 150 bytes) whose one segment is a file of the server."""
    path.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:12\n#EXTINF:12.0,\n{target}\n#EXT-X-ENDLIST\n")
    return path


def upload(answerer, source: Path, name: str | None = None, content: bytes | None = None) -> Path:
    """`source` as Gradio would hand over an upload: a copy in a folder of its own under the page's upload folder."""
    folder = Path(tempfile.mkdtemp(dir=answerer.folders.gradio))
    target = folder / (name or source.name)
    if content is not None:
        target.write_bytes(content)
    else:
        shutil.copyfile(source, target)
    return target


SHORT_ANSWER = AskOptions(max_new_tokens=6)


def run(answerer, uploaded, location, question, conversation=None, options=SHORT_ANSWER):
    """All page updates of one request."""
    return list(answerer.ask(uploaded, location, question, conversation or Conversation(), options))


def assert_answered(updates):
    final = updates[-1]
    assert final.done and not final.error, final.status
    assert final.answer and final.report_image is not None and final.report["answer"] == final.answer
    assert final.seconds_to_first_token is not None
    return final


def assert_refused(updates, *messages: str) -> str:
    """One error update, saying each of `messages`; returns the status."""
    assert len(updates) == 1 and updates[0].error and updates[0].done, updates[-1].status
    status = updates[0].status
    assert status.startswith(ERROR_MARK) and updates[0].report_image is None
    for message in messages:
        assert message in status, status
    return status


@contextlib.contextmanager
def counting_decodes(answerer):
    """Records every decoding the answerer starts (a refusal must come before any)."""
    calls = []
    decode = answerer.decode
    answerer.decode = lambda *args, **kwargs: calls.append(args) or decode(*args, **kwargs)
    try:
        yield calls
    finally:
        del answerer.decode


class CountingFileHandler(http.server.SimpleHTTPRequestHandler):
    requests: list  # set per server

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args) -> None:  # keep the test output to the test
        pass


@contextlib.contextmanager
def file_server(folder: Path):
    """A local HTTP server for `folder`; yields (base URL, list of the paths it was asked for)."""
    requests: list[str] = []
    handler = functools.partial(type("Handler", (CountingFileHandler,), {"requests": requests}),
                                directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------------------------------------------------
# Request logic (no Gradio)
# --------------------------------------------------------------------------------------------------------------------


def test_options_from_page_fields():
    assert AskOptions.from_page(0.5, 0, 0, 32) == AskOptions(fps=0.5, max_frames=None, max_visual_tokens=None,
                                                             max_new_tokens=32)
    assert AskOptions.from_page("2", 300.0, "1500", 8) == AskOptions(2.0, 300, 1500, 8)
    for fields, message in (
        ((0, 0, 0, 8), "fps"), ((None, 0, 0, 8), "fps"), ((1, -3, 0, 8), "frame cap"), ((1, 2.5, 0, 8), "frame cap"),
        ((1, 0, "many", 8), "token budget"), ((1, 0, 0, 0), "answer length"),
    ):
        with pytest.raises(DemoInputError, match=message):
            AskOptions.from_page(*fields)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "-inf", "1e999", "nan"])
@pytest.mark.parametrize("field", range(4))
def test_options_refuse_non_finite_numbers(field, bad):
    fields = [1.0, 0, 0, 8]
    fields[field] = bad
    with pytest.raises(DemoInputError, match="finite"):
        AskOptions.from_page(*fields)


def test_options_refuse_values_over_the_page_limits(public):
    limits = public.option_limits()
    assert limits["max_fps"] == 4 and limits["frame_limit"] == 3600
    assert limits["visual_tokens_limit"] == public.model.config.max_context_length
    assert AskOptions.from_page(4, 3600, limits["visual_tokens_limit"], 1024, **limits).fps == 4
    for fields, message in (
        ((1000, 0, 0, 8), "fps: at most 4"), ((1, 3601, 0, 8), "frame cap: at most 3,600"),
        ((1, 0, limits["visual_tokens_limit"] + 1, 8), "token budget: at most"),
        ((1, 0, 0, 10**9), "answer length: at most 1,024"),
    ):
        with pytest.raises(DemoInputError, match=message):
            AskOptions.from_page(*fields, **limits)


def test_prompt_tokens_match_the_processor(answerer, clip):
    """The page tokenizes the chat itself (to reuse decoded frames); it must give what `apply_chat_template` gives."""
    messages = [{"role": "user", "content": [{"type": "video", "path": str(clip)}, {"type": "text", "text": QUESTION}]}]
    expected = answerer.processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    ours = answerer.text_inputs(Conversation(), QUESTION)
    assert ours["input_ids"].tolist() == expected["input_ids"].tolist()
    with_history = answerer.text_inputs(Conversation(turns=[(QUESTION, "red square")]), "and then ?")
    assert with_history["input_ids"].shape[1] > ours["input_ids"].shape[1]
    assert int((with_history["input_ids"] == answerer.model.config.video_token_id).sum()) == 1


def test_answer_streams_then_report(answerer, clip):
    updates = run(answerer, None, str(clip), QUESTION, options=AskOptions(max_new_tokens=8))
    final = assert_answered(updates)
    partial = [u.answer for u in updates if not u.done and u.answer]
    assert len(partial) >= 2 and all(final.answer.startswith(p.strip()) for p in partial)  # piece by piece
    assert any("decoding" in u.status for u in updates) and any("DINOv2" in u.status for u in updates)
    compression = final.report["compression"]
    assert compression["num_input_frames"] == 12
    assert "12 sampled frames" in final.report_summary
    assert final.conversation.turns == [(QUESTION, final.answer)]
    assert final.report_image.width > 0


def test_follow_up_reuses_decoded_frames_and_keeps_history(answerer, clip, monkeypatch):
    encodings = []
    encode = answerer.model.encode_video_stream  # the page streams the video into the towers
    monkeypatch.setattr(answerer.model, "encode_video_stream", lambda *a, **k: encodings.append(1) or encode(*a, **k))
    first = assert_answered(run(answerer, None, str(clip), QUESTION))
    second = assert_answered(run(answerer, None, str(clip), "and then ?", first.conversation))
    assert "Question 2" in second.status and "reused" in second.status and "ran again" in second.status
    assert len(encodings) <= 1  # the towers ran for the first question only (none if an earlier test encoded it)
    assert [q for q, _ in second.conversation.turns] == [QUESTION, "and then ?"]
    assert second.report["budget"]["prompt_tokens"] > first.report["budget"]["prompt_tokens"]
    # Other options mean another decoding, and a new conversation.
    before = len(encodings)
    other = assert_answered(run(answerer, None, str(clip), QUESTION, second.conversation,
                                AskOptions(fps=0.5, max_frames=4, max_visual_tokens=100, max_new_tokens=4)))
    assert "New conversation" in other.status and len(other.conversation.turns) == 1
    assert len(encodings) == before + 1  # the other options were streamed into the towers once more
    assert other.report["compression"]["num_input_frames"] == 4
    assert other.report["compression"]["num_visual_tokens"] <= 100


def test_bad_input_gives_a_message_and_the_next_request_works(answerer, clip, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(os.urandom(4096))
    cases = [
        ((None, str(clip), "   "), "Type a question"),
        ((None, "", QUESTION), "No video"),
        ((str(broken), "", QUESTION), "broken.mp4"),
        ((str(write_audio_only(tmp_path / "speech.mp4")), "", QUESTION), "no video stream"),
        ((None, str(tmp_path / "missing.mp4"), QUESTION), "No such file"),
    ]
    for arguments, message in cases:
        assert_refused(run(answerer, *arguments), message)
    assert_answered(run(answerer, str(clip), "", QUESTION))


def test_length_limit_and_full_context(answerer, clip):
    saved = answerer.policy
    answerer.policy = dataclasses.replace(saved, max_seconds=5.0)
    try:
        assert_refused(run(answerer, str(clip), "", QUESTION), "accepts videos up to 5 s")
    finally:
        answerer.policy = saved
    first = assert_answered(run(answerer, None, str(clip), QUESTION))
    long_history = Conversation(first.conversation.video_key, [(" ".join(["red"] * 4000), "blue")])
    updates = run(answerer, None, str(clip), QUESTION, long_history)
    assert updates[-1].error and "Clear conversation" in updates[-1].status


def test_example_clip_is_named_never_its_server_path(public):
    """The text box offers the example by name; the page accepts it with local paths off, and its server path is
    neither needed nor accepted."""
    assert public.example_video.name == EXAMPLE_NAME and public.folders.holds(public.example_video)
    with counting_decodes(public) as decodes:
        assert_refused(run(public, None, str(public.example_video), QUESTION), "paths on the server are turned off")
        assert decodes == []
    request = public.resolve_video(None, EXAMPLE_NAME, SHORT_ANSWER)
    assert request.label == EXAMPLE_NAME and request.sampled == 90


# --------------------------------------------------------------------------------------------------------------------
# A public page: what it refuses, what it keeps, what it says (issue 22)
# --------------------------------------------------------------------------------------------------------------------


def test_public_page_refuses_internal_urls_without_contacting_them(public, clip):
    with file_server(clip.parent) as (base, requests), counting_decodes(public) as decodes:
        port = base.rsplit(":", 1)[1]
        for url in (f"{base}/{clip.name}", f"http://localhost:{port}/{clip.name}", f"http://[::1]:{port}/",
                    f"http://2130706433:{port}/{clip.name}", f"http://0x7f.1:{port}/", "http://169.254.169.254/latest",
                    "http://10.0.0.1/", f"http://[::ffff:127.0.0.1]:{port}/"):
            status = assert_refused(run(public, None, url, QUESTION), "not a public internet address")
            assert url in status
        assert requests == [] and decodes == []  # nothing was fetched, nothing decoded
    for other in ("file:///etc/passwd", "ftp://example.com/clip.mp4"):
        assert_refused(run(public, None, other, QUESTION), "only http:// and https:// URLs")


def test_public_page_says_nothing_about_server_files(public, clip, tmp_path):
    """Existing file, missing file, folder: the same refusal, decided before looking at the file system."""
    frames = tmp_path / "frames"
    frames.mkdir()
    answers = set()
    with counting_decodes(public) as decodes:
        for path in (clip, tmp_path / "missing.mp4", frames, Path("/etc/passwd")):
            status = assert_refused(run(public, None, str(path), QUESTION), "paths on the server are turned off")
            answers.add(status.replace(str(path), "PATH"))
        assert decodes == []
    assert len(answers) == 1, answers


@pytest.mark.parametrize("name, content", [
    ("list.m3u8", "hls"), ("clip.mp4", "hls"), ("list.ffconcat", "concat"), ("notes.txt", "text"),
])
def test_uploaded_playlists_and_lists_are_refused_and_deleted(public, clip, name, content):
    """An upload naming a server file (an HLS playlist, a concat list, under any file name) is refused as "not a
    video" before anything is decoded; nothing of the named file shows, and the upload is deleted."""
    text = {"hls": f"#EXTM3U\n#EXTINF:12.0,\n{clip}\n#EXT-X-ENDLIST\n",
            "concat": f"ffconcat version 1.0\nfile '{clip}'\n", "text": "just some notes\n" * 20}[content]
    uploaded = upload(public, clip, name, text.encode())
    with counting_decodes(public) as decodes:
        status = assert_refused(run(public, str(uploaded), "", QUESTION), "not a video", name)
        assert decodes == []
    assert str(clip) not in status and str(public.folders.run) not in status
    assert not uploaded.exists() and not uploaded.parent.exists()


def test_uploads_over_the_size_cap_are_refused_and_deleted(public, clip):
    saved = public.policy
    public.policy = dataclasses.replace(saved, max_bytes=clip.stat().st_size - 1)
    try:
        uploaded = upload(public, clip)
        with counting_decodes(public) as decodes:
            assert_refused(run(public, str(uploaded), "", QUESTION), "clip.mp4", "over the")
            assert decodes == []
        assert not uploaded.exists()
    finally:
        public.policy = saved


def test_frames_are_bounded_before_decoding(public, clip):
    saved = public.policy
    public.policy = dataclasses.replace(saved, max_frames=10, allow_local_paths=True)
    try:
        with counting_decodes(public) as decodes:
            # 12 s at 1 fps: 12 frames, over the cap of 10.
            assert_refused(run(public, None, str(clip), QUESTION), "12 frames to decode, over the limit of 10")
            # fps over the page's cap (a client that skips the page's own field check).
            assert_refused(run(public, None, str(clip), QUESTION, options=AskOptions(fps=1000, max_new_tokens=4)),
                           "fps=1000 is over", "limit of 4")
            assert decodes == []
            # A frame cap under the limit: 8 frames are decoded.
            final = assert_answered(run(public, None, str(clip), QUESTION,
                                        options=AskOptions(max_frames=8, max_new_tokens=4)))
        assert final.report["compression"]["num_input_frames"] == 8 and len(decodes) == 1
    finally:
        public.policy = saved


def test_downloads_are_deleted_and_not_fetched_again_for_follow_ups(answerer, clip, monkeypatch):
    # Keep every resolved source alive: the download must go because the request closes it, not by garbage collection.
    sources = []
    resolve = web_demo.resolve_media
    monkeypatch.setattr(web_demo, "resolve_media", lambda *a, **k: sources.append(resolve(*a, **k)) or sources[-1])
    with file_server(clip.parent) as (base, requests):
        port = int(base.rsplit(":", 1)[1])
        monkeypatch.setattr(media_inputs, "_ADMITTED_FOR_TESTS", frozenset({("127.0.0.1", port)}))
        url = f"{base}/{clip.name}"
        first = assert_answered(run(answerer, None, url, QUESTION))
        assert first.report["video"] == url and requests == [f"/{clip.name}"]
        assert [source.temporary for source in sources] == [True] and not sources[0].path.exists()
        assert list(answerer.folders.downloads.iterdir()) == []  # deleted after the request
        second = assert_answered(run(answerer, None, url, "and then ?", first.conversation))
        assert "Question 2" in second.status and "reused" in second.status
        assert len(requests) == 1  # the follow-up used the decoded frames: nothing fetched again
        assert_refused(run(answerer, None, f"{base}/nothing-here.mp4", QUESTION), "Could not download", "HTTP 404")
        assert list(answerer.folders.downloads.iterdir()) == []


def test_uploads_stay_while_in_use_and_go_after(answerer, clip, tmp_path, monkeypatch):
    monkeypatch.setattr(web_demo, "KEPT_UPLOADS", 1)
    first = upload(answerer, clip)
    assert_answered(run(answerer, str(first), "", QUESTION))
    assert first.exists()  # in use: follow-up questions read it again
    broken = upload(answerer, clip, "broken.mp4", os.urandom(4096))
    assert_refused(run(answerer, str(broken), "", QUESTION), "broken.mp4")
    assert not broken.exists() and first.exists()  # the refused upload went, the one in use stayed
    second = upload(answerer, clip, "other.mp4")
    assert_answered(run(answerer, str(second), "", QUESTION))
    assert second.exists() and not first.exists()  # replaced: the older upload was deleted
    assert_refused(run(answerer, str(first), "", QUESTION), "no longer on the server", "upload it again")
    outside = tmp_path / "mine.mp4"  # a direct caller's own file is never deleted
    outside.write_bytes(os.urandom(4096))
    run(answerer, str(outside), "", QUESTION)
    assert outside.exists()
    answerer.uploads_only_from = answerer.folders.gradio  # as on the page: uploads come from Gradio's folder only
    try:
        assert_refused(run(answerer, str(clip), "", QUESTION), "upload button")
    finally:
        answerer.uploads_only_from = None


def test_messages_never_name_server_paths(public, clip, tmp_path):
    folder = str(public.folders.run)
    assert public_message(f"Could not open '{folder}/downloads/x/video-1.mp4': corrupt", {}) == \
        "Could not open '(a file on the server)': corrupt"
    assert public_message(f"in {folder}/a.mp4", {f"{folder}/a.mp4": "clip.mp4"}) == "in clip.mp4"
    assert public_message("Could not download http://example.com/a/b.mp4 (/tmp/x/y)", {}) == \
        "Could not download http://example.com/a/b.mp4 ((a file on the server))"
    assert public_message("No such file: /data/my/clip.mp4", {}, keep=("/data/my/clip.mp4",)) == \
        "No such file: /data/my/clip.mp4"
    broken = upload(public, clip, "broken.mp4", b"\x00\x01" + os.urandom(4096))
    status = assert_refused(run(public, str(broken), "", QUESTION), "broken.mp4")
    assert folder not in status and tempfile.gettempdir() + "/" not in status


def test_request_deadline(answerer, clip, monkeypatch):
    saved = answerer.max_request_seconds
    answerer.max_request_seconds = 1e-6  # over before the first frame is decoded
    try:
        updates = run(answerer, None, str(clip), QUESTION, options=AskOptions(fps=0.9, max_new_tokens=4))
        assert updates[-1].error and "took longer than this page's limit" in updates[-1].status
    finally:
        answerer.max_request_seconds = saved
    assert answerer._lock.acquire(blocking=False)  # the stopped request let the model go
    answerer._lock.release()
    # The answer is bounded by the time left (transformers' max_time).
    seen = {}
    generate = answerer.model.generate
    monkeypatch.setattr(answerer.model, "generate", lambda **kwargs: seen.update(kwargs) or generate(**kwargs))
    assert_answered(run(answerer, None, str(clip), QUESTION))
    assert 0 < seen["max_time"] <= answerer.max_request_seconds


def test_folders_of_frames_where_local_paths_are_allowed(answerer, tmp_path):
    from PIL import Image

    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(6):
        Image.fromarray(np.full((72, 128, 3), 40 * index, dtype=np.uint8)).save(frames / f"{index:03d}.png")
    # The page always sends an fps; a folder has no frame rate, so every frame is used.
    final = assert_answered(run(answerer, None, str(frames), QUESTION, options=AskOptions(fps=2.0, max_new_tokens=4)))
    assert final.report["compression"]["num_input_frames"] == 6 and "folder of frames" in final.status
    capped = answerer.resolve_video(None, str(frames), AskOptions(max_frames=3))
    assert (capped.kind, capped.fps, capped.sampled) == ("frames", None, 3)


def test_page_folders_are_private_and_cleaned(tmp_path):
    root = tmp_path / "root"
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    stale = root / f"run-{finished.pid}-abc"  # a run whose process is gone (a killed server)
    alive = root / f"run-{os.getpid()}-def"
    for folder in (stale / "downloads", alive):
        folder.mkdir(parents=True)
    (stale / "downloads" / "video.mp4").write_bytes(b"x")
    folders = PageFolders(root)
    assert not stale.exists() and alive.exists()
    assert (root.stat().st_mode & 0o777) == 0o700 and (folders.run.stat().st_mode & 0o777) == 0o700
    assert folders.holds(folders.downloads / "x") and not folders.holds(tmp_path)
    folders.close()
    assert not folders.run.exists() and folders.closed
    # A root that is a link (planted by someone else) is not used.
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    other = PageFolders(tmp_path / "link")
    assert not other.holds(target / "x") and list(target.iterdir()) == []
    other.close()


def test_random_weights_are_said_plainly(answerer, tmp_path):
    from longvu_hf import LongVUForConditionalGeneration
    from longvu_hf.tiny import save_tiny_model

    assert answerer.random_weights and "RANDOM WEIGHTS" in web_demo._banner(answerer)
    folder = save_tiny_model(tmp_path / "tiny")
    assert has_random_weights(LongVUForConditionalGeneration.from_pretrained(folder))
    loaded = load_answerer(str(folder))  # a saved tiny model, loaded as any checkpoint: still detected
    try:
        assert loaded.random_weights and "(random weights)" in loaded.model_name
        assert "RANDOM WEIGHTS" in web_demo._banner(loaded)
    finally:
        loaded.close()
    config = json.loads((folder / "config.json").read_text())
    del config["random_weights"]
    (folder / "config.json").write_text(json.dumps(config))
    assert not has_random_weights(LongVUForConditionalGeneration.from_pretrained(folder))


def test_reachable_from_other_machines():
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"):
        assert reachable_from_other_machines(host, share=False) is None, host
    for host in ("0.0.0.0", "::", "", "192.168.1.5", "myhost.example.com"):
        assert reachable_from_other_machines(host, share=False), host
    assert "--share" in reachable_from_other_machines("127.0.0.1", share=True)


def test_launch_refuses_local_paths_on_a_reachable_page(monkeypatch):
    monkeypatch.setattr(web_demo, "load_answerer", lambda *a, **k: pytest.fail("must refuse before loading"))
    for options in ({"host": "0.0.0.0"}, {"share": True}, {"host": "10.1.2.3"}):
        with pytest.raises(ValueError, match="allow_local_paths_on_network"):
            web_demo.launch(None, allow_local_paths=True, **options)
    with pytest.raises(ValueError, match="allow_local_paths_on_network"):
        web_demo.launch(None, policy=InputPolicy.local_user(), host="0.0.0.0")


def test_cli_demo_web_local_path_options(monkeypatch, capsys):
    from longvu_hf.cli import main

    calls = []
    monkeypatch.setattr(web_demo, "launch", lambda model, **options: calls.append(options))
    monkeypatch.setitem(sys.modules, "gradio", types.ModuleType("gradio"))  # the CLI only checks it is there
    for extra in (["--host", "0.0.0.0"], ["--share"], ["--host", "192.168.0.7"]):
        assert main(["demo", "--web", "--allow-local-paths", *extra]) == 2
        error = capsys.readouterr().err
        assert "--allow-local-paths-on-network" in error and len(error.strip().splitlines()) == 1
    assert main(["demo", "--web", "--allow-local-paths-on-network"]) == 2 and calls == []
    capsys.readouterr()
    assert main(["demo", "--web"]) == 0
    assert main(["demo", "--web", "--host", "0.0.0.0"]) == 0
    assert main(["demo", "--web", "--allow-local-paths"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["demo", "--web", "--allow-local-paths", "--host", "0.0.0.0", "--allow-local-paths-on-network"]) == 0
    assert "WARNING" in capsys.readouterr().err
    assert [c["allow_local_paths"] for c in calls] == [False, False, True, True]
    assert calls[1]["host"] == "0.0.0.0" and calls[3]["allow_local_paths_on_network"]
    assert calls[0]["max_request_seconds"] == web_demo.DEFAULT_REQUEST_SECONDS
    assert main(["demo", "--web", "--max-request-seconds", "0"]) == 0 and calls[-1]["max_request_seconds"] is None
    for bad in ("nan", "-5", "inf"):
        assert main(["demo", "--web", "--max-request-seconds", bad]) == 2 and len(calls) == 5
        assert "--max-request-seconds" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------------
# The Space
# --------------------------------------------------------------------------------------------------------------------


def test_space_runs_the_package_page(monkeypatch):
    """space/app.py is a thin entry point: the package's `launch`, uploads and URLs only, the limits set."""
    import runpy

    calls = []
    monkeypatch.setattr(web_demo, "launch", lambda model, **options: calls.append((model, options)))
    monkeypatch.setenv("LONGVU_MODEL", "someone/LongVU_Qwen2_7B-hf")
    monkeypatch.setenv("LONGVU_MAX_VIDEO_SECONDS", "300")
    monkeypatch.delenv("LONGVU_MAX_REQUEST_SECONDS", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    runpy.run_path(str(REPOSITORY / "space" / "app.py"), run_name="__main__")
    assert calls == [("someone/LongVU_Qwen2_7B-hf", {
        "host": "0.0.0.0", "port": 7860, "max_video_seconds": 300.0, "max_request_seconds": 600.0,
        "allow_local_paths": False})]
    front_matter = (REPOSITORY / "space" / "README.md").read_text().split("---")[1]
    assert "sdk: gradio" in front_matter and "app_file: app.py" in front_matter


def _requirement_names(lines) -> dict:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    requirements = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)  # raises on anything pip would not parse
            requirements[canonicalize_name(requirement.name)] = requirement
    return requirements


def test_space_requirements_install_as_written():
    """The Space installs requirements.txt from PyPI before its other files arrive: only PyPI names (no URL, no local
    path, not longvu-hf itself, which is not on PyPI), and exactly the package's own dependencies and [demo] extra,
    so that the package source shipped next to app.py finds everything it imports."""
    lines = (REPOSITORY / "space" / "requirements.txt").read_text().splitlines()
    assert not any(line.strip().startswith(("-", ".", "/", "git+", "http")) for line in lines)
    space = _requirement_names(lines)
    assert all(requirement.url is None and not requirement.extras for requirement in space.values())
    assert "longvu-hf" not in space and not any("OWNER" in line for line in lines)
    setup = configparser.ConfigParser()
    setup.read(REPOSITORY / "setup.cfg")
    declared = _requirement_names(setup["options"]["install_requires"].splitlines()
                                  + setup["options.extras_require"]["demo"].splitlines())
    assert {name: str(r.specifier) for name, r in space.items()} == \
        {name: str(r.specifier) for name, r in declared.items()}
    # The Space's README states the public page's limits: they must be the policy's.
    policy, readme = InputPolicy.public_page(), (REPOSITORY / "space" / "README.md").read_text()
    assert f"uploads up to {policy.max_bytes // 1024**2} MB" in readme and f"at most {policy.max_fps:g} fps" in readme
    assert f"{policy.max_frames:,} sampled frames" in readme and f"within {policy.download_timeout:g} s" in readme
    assert f"{web_demo.DEFAULT_QUEUE_SIZE} requests" in readme


# --------------------------------------------------------------------------------------------------------------------
# The page in a real browser
# --------------------------------------------------------------------------------------------------------------------


def _chromium() -> str | None:
    return os.environ.get("LONGVU_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


BOT_BUBBLES = '#chat [data-testid="bot"]'
# Records every text the newest answer bubble shows, to check that the answer arrives piece by piece.
RECORD_ANSWERS = """() => {
  window.__answers = [];
  new MutationObserver(() => {
    const bubbles = document.querySelectorAll('BOT_BUBBLES');
    const last = bubbles[bubbles.length - 1];
    if (last) window.__answers.push(last.innerText.trim());
  }).observe(document.querySelector('#chat'), {subtree: true, childList: true, characterData: true});
}""".replace("BOT_BUBBLES", BOT_BUBBLES)


FINISHED = """([before, expect]) => {
  const status = document.querySelector('#status');
  const pending = status.querySelector('[data-testid="status-tracker"]:not(.hide)');
  const text = status.innerText;
  return !pending && text !== before && text.includes(expect);
}"""


def _needs(reason: str) -> None:
    """Skip with `reason`, or fail where CI asks for the browser test to run (LONGVU_REQUIRE_BROWSER=1)."""
    if os.environ.get("LONGVU_REQUIRE_BROWSER") == "1":
        pytest.fail(f"LONGVU_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


# --------------------------------------------------------------------------------------------------------------------
# The server (Gradio): what it serves and what it says
# --------------------------------------------------------------------------------------------------------------------


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_server_serves_no_file_of_the_page_and_names_no_folder(monkeypatch):
    """Fetched files and the page's folders are never served back (only Gradio's own uploads and cache are), their
    names appear nowhere in the page's config or API schema, uploads are capped, the queue is bounded, and closing
    deletes everything."""
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("GRADIO_TEMP_DIR", "restored-after-the-test")
    try:
        import gradio  # noqa: F401
    except ImportError:
        _needs("the server test needs Gradio: pip install 'longvu-hf[demo]'")
    port = _free_port()
    page = web_demo.launch(None, port=port, block=False, quiet=True)
    answerer = page.answerer
    try:
        base = f"http://127.0.0.1:{port}"
        folders = answerer.folders
        assert os.environ["GRADIO_TEMP_DIR"] == str(folders.gradio) and answerer.uploads_only_from == folders.gradio
        for route in ("/config", "/gradio_api/info"):
            with urllib.request.urlopen(base + route, timeout=30) as response:
                text = response.read().decode()
            assert str(folders.root) not in text and "longvu-web-" not in text, route
        with urllib.request.urlopen(base + "/config", timeout=30) as response:
            config = json.loads(response.read())
        assert config["max_file_size"] == answerer.policy.max_bytes == 200 * 1024**2
        assert page._queue.max_size == web_demo.DEFAULT_QUEUE_SIZE
        # Nothing is served outside Gradio's own files, and the page's private folders are blocked on top of that.
        assert list(page.allowed_paths) == [] and str(folders.downloads) in page.blocked_paths
        fetched = folders.downloads / "longvu-input-x" / "video-1.mp4"  # where a download lives while in use
        fetched.parent.mkdir()
        fetched.write_bytes(b"secret body")
        gradio_file = folders.gradio / "0123abcd" / "upload.mp4"  # what Gradio serves: its own uploads and cache
        gradio_file.parent.mkdir()
        gradio_file.write_bytes(b"an upload")
        assert _http_status(f"{base}/gradio_api/file={gradio_file}") == 200  # the route works...
        for path in (fetched, answerer.example_video, folders.example, folders.downloads):
            assert _http_status(f"{base}/gradio_api/file={path}") == 403, path  # ...and refuses these
    finally:
        page.close()
        answerer.close()
    assert not folders.run.exists()


def test_page_in_a_real_browser(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")  # no network calls from the server under test
    monkeypatch.setenv("GRADIO_TEMP_DIR", "restored-after-the-test")  # the page sets its own
    try:
        import gradio  # noqa: F401
        from playwright import sync_api
    except ImportError:
        _needs("the browser test needs Gradio and Playwright: pip install 'longvu-hf[demo]' playwright")
    browser_path = _chromium()
    if browser_path is None:
        _needs("the browser test needs Debian's chromium package (apt-get install chromium)")
    from longvu_hf.web_demo import launch

    # 60 s at 1 fps is more than the tiny model's budget: frame selection and resolution mixing both show.
    good = write_demo_clip(tmp_path / "clip.mp4", seconds=60, fps=2)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(os.urandom(4096))
    port = _free_port()
    started = time.perf_counter()
    page = launch(None, port=port, block=False, quiet=True)
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
            tab = browser.new_page(viewport={"width": 1400, "height": 1000})
            tab.set_default_timeout(90_000)
            tab.goto(f"http://127.0.0.1:{port}/")
            status = tab.locator("#status")

            def upload(path: Path) -> None:
                clear = tab.locator("#video-upload button[aria-label='Clear']")
                if clear.count():
                    clear.first.click()
                tab.locator("#video-upload input[type=file]").set_input_files(str(path))
                tab.locator(f"#video-upload td.filename[aria-label='{path.name}']").wait_for()

            def ask(question: str, expect: str) -> str:
                """Ask, then wait until the request has finished (Gradio's pending timer gone from the status) with
                a new status line that holds `expect`."""
                before = status.inner_text()
                tab.locator("#question textarea").fill(question)
                tab.locator("#ask").click()
                tab.wait_for_function(FINISHED, arg=[before, expect], timeout=90_000)
                return status.inner_text()

            # A public page: an internal URL and an uploaded playlist naming a server file are refused with a
            # message, nothing is fetched and no frame shows.
            location = tab.locator("#video-location textarea, #video-location input").first
            with file_server(good.parent) as (base, requests):
                location.fill(f"{base}/{good.name}")
                assert "not a public internet address" in ask(QUESTION, "Error")
                assert requests == []
            location.fill("")  # only the upload below can be used from here on
            upload(write_playlist(tmp_path / "list.m3u8", good))
            refused = ask(QUESTION, "Error")
            assert "list.m3u8" in refused and "not a video" in refused and str(good) not in refused
            assert tab.locator("#report-image img").count() == 0 and tab.locator(BOT_BUBBLES).count() == 0
            uploading = time.perf_counter()
            upload(good)
            tab.evaluate(RECORD_ANSWERS)
            asking = time.perf_counter()
            done = ask(QUESTION, "Done")
            print(f"\nweb demo: page served after {uploading - started:.1f} s, upload {asking - uploading:.1f} s; "
                  f"{done.splitlines()[0]}")
            assert "clip.mp4" in done and "first token after" in done
            answers = [text for text in tab.evaluate("window.__answers") if text]
            partial = set(answers[:-1]) - {answers[-1]}
            # The answer streamed in: the bubble showed several growing beginnings of the final answer.
            assert len(partial) >= 2 and all(answers[-1].startswith(text) for text in partial), answers
            report = tab.locator("#report-image img")
            sync_api.expect(report).to_be_visible()
            assert tab.evaluate("document.querySelector('#report-image img').naturalWidth") > 500
            sync_api.expect(tab.locator("#report-summary")).to_contain_text("60 sampled frames")
            screenshot = Path(os.environ.get("LONGVU_WEB_SCREENSHOT") or tmp_path / "web_demo.png")
            tab.screenshot(path=str(screenshot), full_page=True)

            # Bad input: an empty question, then a broken file; each gets a message and the page stays usable.
            assert "Type a question" in ask("", "Error")
            upload(broken)
            refused = ask(QUESTION, "Error")
            assert "broken.mp4" in refused and "not a readable video" in refused
            upload(good)  # a new upload: a new conversation
            assert "New conversation about clip.mp4" in ask(QUESTION, "Done")
            # A follow-up on the same video: the chat keeps both turns, the decoded frames are reused.
            follow_up = ask("and then ?", "Done")
            assert re.search(r"Question 2 on clip\.mp4: decoded \d+ frames reused", follow_up), follow_up
            sync_api.expect(tab.locator("#chat")).to_contain_text("and then ?")
            assert tab.locator(BOT_BUBBLES).count() == 2
            browser.close()
    finally:
        page.close()
        page.answerer.close()
    print(f"web demo: browser test {time.perf_counter() - started:.0f} s in all")


def test_local_paths_keep_the_page_bounds(answerer):
    # Paths on the server are the operator's files (no size cap), but whoever reaches the page asks for the work:
    # frames, fps, seconds and pixels stay bounded as on the public page.
    public = InputPolicy.public_page()
    assert answerer.policy.allow_local_paths and answerer.policy.max_local_bytes is None
    for bound in ("max_frames", "max_fps", "max_seconds", "max_pixels", "max_bytes", "download_timeout"):
        assert getattr(answerer.policy, bound) == getattr(public, bound) is not None, bound
