"""The LongVU web demo as a Hugging Face Space: copy this folder (app.py, requirements.txt, README.md) into a new
Gradio Space. The page is `longvu_hf.web_demo` (the code of `longvu demo --web`), installed from requirements.txt.

Settings, as the Space's variables:
    LONGVU_MODEL               a converted LongVU checkpoint on the Hub (e.g. your `longvu convert --push-to-hub` repo),
                               or an official `Vision-CAIR/LongVU_*` id (converted at start-up, ~15 GB for the 7B);
                               unset: the tiny model with random weights (shows the mechanics, answers are noise)
    LONGVU_MAX_VIDEO_SECONDS   the longest video the page accepts (default 600 s; longer ones get a message)
"""

import os

from longvu_hf.web_demo import launch

MAX_VIDEO_SECONDS = float(os.environ.get("LONGVU_MAX_VIDEO_SECONDS", "600"))

if __name__ == "__main__":
    launch(
        os.environ.get("LONGVU_MODEL") or None,
        host="0.0.0.0",  # reachable from the Space's proxy
        port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        max_video_seconds=MAX_VIDEO_SECONDS,
        allow_local_paths=False,  # a public page must not read the server's files: uploads and URLs only
    )
