"""The LongVU web demo as a Hugging Face Space. The page is `longvu_hf.web_demo` (the code of `longvu demo --web`);
the Space ships the package's source as the folder `longvu_hf/` next to this file (see README.md, "Publishing").

Settings, as the Space's variables:
    LONGVU_MODEL                 a converted LongVU checkpoint on the Hub (e.g. your `longvu convert --push-to-hub`
                                 repo), or an official `Vision-CAIR/LongVU_*` id (converted at start-up, ~15 GB for the
                                 7B); unset: the tiny model with RANDOM weights (shows the mechanics, answers are noise)
    LONGVU_MAX_VIDEO_SECONDS     the longest video the page accepts (default 600 s; longer ones get a message)
    LONGVU_MAX_REQUEST_SECONDS   one request's deadline: download, decoding, towers and answer (default 600 s)

The page is public: uploads (200 MB at most) and public http(s) URLs only, never files of the Space's machine
(README of the repository, "Running the page in public").
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if not (HERE / "longvu_hf").is_dir() and (HERE.parent / "src" / "longvu_hf").is_dir():
    sys.path.insert(0, str(HERE.parent / "src"))  # run from a checkout of the repository: its source

from longvu_hf.web_demo import launch  # noqa: E402

MAX_VIDEO_SECONDS = float(os.environ.get("LONGVU_MAX_VIDEO_SECONDS", "600"))
MAX_REQUEST_SECONDS = float(os.environ.get("LONGVU_MAX_REQUEST_SECONDS", "600"))

if __name__ == "__main__":
    launch(
        os.environ.get("LONGVU_MODEL") or None,
        host="0.0.0.0",  # reachable from the Space's proxy
        port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        max_video_seconds=MAX_VIDEO_SECONDS,
        max_request_seconds=MAX_REQUEST_SECONDS,
        allow_local_paths=False,  # a public page must not read the server's files: uploads and URLs only
    )
