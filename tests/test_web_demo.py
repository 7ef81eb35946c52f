"""The web demo (`longvu_hf.web_demo`): the request logic on the tiny random model, and the page in a real browser.

The request-logic tests need only the [dev] extra. The browser test needs Gradio, Playwright and Debian's `chromium`
(`.ci/run` installs them in `.venv-web`); without them it is skipped with the reason (LONGVU_REQUIRE_BROWSER=1 makes
that a failure, for CI). Set LONGVU_WEB_SCREENSHOT to a .png path to keep the screenshot the browser test takes (the
README's picture, docs/images/web_demo.png, comes from there).
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av", reason="the web demo tests write their clips with PyAV (pip install av)")

from longvu_hf.cli import write_demo_clip
from longvu_hf.web_demo import (
    ERROR_MARK,
    AskOptions,
    Conversation,
    DemoInputError,
    load_answerer,
)

QUESTION = "What is happening in this video ?"


@pytest.fixture(scope="module")
def answerer():
    return load_answerer(None)  # the CLI's tiny random model, offline


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
    encode = answerer.model.encode_videos
    monkeypatch.setattr(answerer.model, "encode_videos", lambda *a, **k: encodings.append(1) or encode(*a, **k))
    first = assert_answered(run(answerer, None, str(clip), QUESTION))
    second = assert_answered(run(answerer, None, str(clip), "and then ?", first.conversation))
    assert "Question 2" in second.status and "reused" in second.status and "ran again" in second.status
    assert len(encodings) <= 1  # the towers ran for the first question only (none if an earlier test encoded it)
    assert [q for q, _ in second.conversation.turns] == [QUESTION, "and then ?"]
    assert second.report["budget"]["prompt_tokens"] > first.report["budget"]["prompt_tokens"]
    # Other options mean another decoding, and a new conversation.
    other = assert_answered(run(answerer, None, str(clip), QUESTION, second.conversation,
                                AskOptions(fps=0.5, max_frames=4, max_visual_tokens=100, max_new_tokens=4)))
    assert "New conversation" in other.status and len(other.conversation.turns) == 1
    assert other.report["compression"]["num_input_frames"] == 4
    assert other.report["compression"]["num_visual_tokens"] <= 100


def test_bad_input_gives_a_message_and_the_next_request_works(answerer, clip, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(os.urandom(4096))
    cases = [
        ((None, str(clip), "   "), "Type a question"),
        ((None, "", QUESTION), "No video"),
        ((str(broken), "", QUESTION), "Cannot read this video"),
        ((str(write_audio_only(tmp_path / "speech.mp4")), "", QUESTION), "no video stream"),
        ((None, str(tmp_path / "missing.mp4"), QUESTION), "No such file"),
    ]
    for arguments, message in cases:
        updates = run(answerer, *arguments)
        assert len(updates) == 1 and updates[0].error and updates[0].done, updates[-1].status
        assert updates[0].status.startswith(ERROR_MARK) and message in updates[0].status
    assert_answered(run(answerer, str(clip), "", QUESTION))


def test_length_limit_local_paths_and_full_context(answerer, clip):
    answerer.max_video_seconds, answerer.allow_local_paths = 5, False
    try:
        updates = run(answerer, str(clip), "", QUESTION)
        assert updates[-1].error and "accepts videos up to 5 s" in updates[-1].status
        with pytest.raises(DemoInputError, match="uploads and http"):
            answerer.resolve_video(None, str(clip))
        assert answerer.resolve_video(None, str(answerer.example_video))[0] == answerer.example_video
    finally:
        answerer.max_video_seconds, answerer.allow_local_paths = None, True
    first = assert_answered(run(answerer, None, str(clip), QUESTION))
    long_history = Conversation(first.conversation.video_key, [(" ".join(["red"] * 4000), "blue")])
    updates = run(answerer, None, str(clip), QUESTION, long_history)
    assert updates[-1].error and "Clear conversation" in updates[-1].status


class QuietFileHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output to the test
        pass


def test_video_from_a_url(answerer, clip):
    handler = functools.partial(QuietFileHandler, directory=str(clip.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        final = assert_answered(run(answerer, None, f"{base}/{clip.name}", QUESTION))
        assert final.report["video"] == f"{base}/{clip.name}"
        updates = run(answerer, None, f"{base}/nothing-here.mp4", QUESTION)
        assert updates[-1].error and "Could not download" in updates[-1].status
    finally:
        server.shutdown()


def test_space_runs_the_package_page(monkeypatch):
    """space/app.py is a thin entry point: the package's `launch`, uploads and URLs only, the length limit set."""
    import runpy

    from longvu_hf import web_demo

    space = Path(__file__).resolve().parents[1] / "space"
    calls = []
    monkeypatch.setattr(web_demo, "launch", lambda model, **options: calls.append((model, options)))
    monkeypatch.setenv("LONGVU_MODEL", "someone/LongVU_Qwen2_7B-hf")
    monkeypatch.setenv("LONGVU_MAX_VIDEO_SECONDS", "300")
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    runpy.run_path(str(space / "app.py"), run_name="__main__")
    assert calls == [("someone/LongVU_Qwen2_7B-hf", {"host": "0.0.0.0", "port": 7860, "max_video_seconds": 300.0,
                                                      "allow_local_paths": False})]
    requirements = [line for line in (space / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    assert requirements == ["longvu-hf[demo]"]
    front_matter = (space / "README.md").read_text().split("---")[1]
    assert "sdk: gradio" in front_matter and "app_file: app.py" in front_matter


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


def test_page_in_a_real_browser(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")  # no network calls from the server under test
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

            # The path box holds the example clip: empty it, so that only the upload can be used.
            tab.locator("#video-location textarea, #video-location input").first.fill("")
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
            assert "Cannot read this video" in ask(QUESTION, "Error")
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
    print(f"web demo: browser test {time.perf_counter() - started:.0f} s in all")
