"""An OpenAI-compatible chat endpoint for LongVU: the video encoded here, the answer streamed from vLLM's async engine.

    python -m longvu_hf.integrations.vllm.server --model LongVU_Qwen2_7B-hf --port 8000 [--tensor-parallel-size 2]

Routes:

- `POST /v1/chat/completions`: OpenAI's chat format. The first user message holds one video part,
  `{"type": "video_url", "video_url": {"url": URL}}`, where URL is a public http(s) URL, a `data:video/...;base64,...`
  URL, or `longvu-video:ID` for a video uploaded before; then text parts. Later user/assistant messages are the
  conversation about that video; a first `system` message replaces the template's system prompt. `stream: true`
  streams the answer as server-sent events (`chat.completion.chunk`, then `data: [DONE]`). `max_tokens`
  (`max_completion_tokens`), `temperature` (default 0: greedy, as the released checkpoints decode), `top_p`, `seed`
  and `stop` are vLLM's sampling parameters. The reply carries `compression`, the video's compression report.
- `POST /v1/videos`: upload a video file (multipart field `file`); it is checked, encoded once, and answers
  `{"id": "longvu-video:ID", ...}` to use as the URL of later requests (follow-up questions skip the towers).
- `GET /v1/models`.

Every video goes through `longvu_hf.media_inputs` under a public-server policy (`InputPolicy.public_page()`: no paths
on the server, public addresses only, size, duration and frame caps): a refused input is a 400 whose message names
the input as the client gave it, never a path on the server. Videos are encoded one at a time in a worker thread, so
other answers keep streaming meanwhile.
"""

import argparse
import base64
import binascii
import json
import secrets
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Request, UploadFile  # FastAPI reads the routes' annotations: module level
from fastapi.responses import JSONResponse, StreamingResponse

from ...media_inputs import InputPolicy, InputRefused, check_decode_bounds, resolve_media
from .engine import AsyncLongVUEngine, LongVURequest

UPLOAD_SCHEME = "longvu-video:"
DEFAULT_MAX_TOKENS = 128
DEFAULT_FPS = 1.0  # the processor's default sampling, for the frame cap checked before decoding


class BadRequest(ValueError):
    """A client error: answered with status 400 and this one-line message."""


def _text_of(content: Any, where: str) -> tuple[str, list[dict]]:
    """The text of a message's content (a string or a list of parts) and its video parts."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or a list of parts")
    texts, videos = [], []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "video_url":
            videos.append(part.get("video_url") or {})
        else:
            raise BadRequest(f"{where}.content[{index}]: parts of type 'text' or 'video_url' only, got {kind!r}")
    return "\n".join(texts), videos


def parse_messages(messages: Any) -> tuple[str, str, list[tuple[str, str]], str | None]:
    """`(video URL, question, history, system)` from OpenAI chat messages (see the module docstring)."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    system = None
    if isinstance(messages[0], dict) and messages[0].get("role") == "system":
        system, videos = _text_of(messages[0].get("content"), "messages[0]")
        if videos:
            raise BadRequest("messages[0]: a system message cannot hold a video")
        messages = messages[1:]
    turns, video_urls = [], []
    for index, message in enumerate(messages):
        where = f"messages[{index + (system is not None)}]"
        role = message.get("role") if isinstance(message, dict) else None
        expected = "user" if index % 2 == 0 else "assistant"
        if role != expected:
            raise BadRequest(f"{where}: expected a {expected} message (user and assistant turns alternate), got {role!r}")
        text, videos = _text_of(message.get("content"), where)
        if videos and index != 0:
            raise BadRequest(f"{where}: the video goes in the first user message")
        video_urls += videos
        turns.append(text)
    if len(turns) % 2 == 0:
        raise BadRequest("the last message must be the user's question")
    if len(video_urls) != 1 or not isinstance(video_urls[0].get("url"), str):
        raise BadRequest(f"the first user message must hold exactly one video_url part with a url, got {len(video_urls)}")
    if not turns[-1].strip():
        raise BadRequest("the question is empty")
    history = list(zip(turns[:-1:2], turns[1:-1:2]))
    return video_urls[0]["url"], turns[-1], history, system


def sampling_from(body: dict, max_tokens_cap: int | None):
    """vLLM `SamplingParams` from the request's OpenAI fields."""
    from vllm import SamplingParams

    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", DEFAULT_MAX_TOKENS))
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if max_tokens_cap is not None and max_tokens > max_tokens_cap:
        raise BadRequest(f"max_tokens {max_tokens} is over this server's limit of {max_tokens_cap}")
    options = {"max_tokens": max_tokens, "temperature": body.get("temperature", 0.0)}
    for name in ("top_p", "seed", "stop"):
        if body.get(name) is not None:
            options[name] = body[name]
    try:
        return SamplingParams(**options)
    except (TypeError, ValueError) as error:
        raise BadRequest(f"sampling parameters: {str(error).splitlines()[0]}") from None


class VideoStore:
    """Encoded videos by key (upload ids, URLs), the most recent `capacity` kept."""

    def __init__(self, capacity: int = 16):
        self.capacity = capacity
        self._items: OrderedDict[str, Any] = OrderedDict()

    def get(self, key: str):
        if key in self._items:
            self._items.move_to_end(key)
        return self._items.get(key)

    def put(self, key: str, features) -> None:
        self._items[key] = features
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)


def build_app(engine: AsyncLongVUEngine, model_name: str, policy: InputPolicy | None = None,
              max_tokens_cap: int | None = 2048, fps: float | None = None):
    """The FastAPI application (see the module docstring). `policy`: what videos are accepted (default:
    `InputPolicy.public_page()`); `fps`: frames sampled per second (default: the processor's)."""
    import asyncio

    policy = policy or InputPolicy.public_page()
    store = VideoStore()
    app = FastAPI(title="LongVU (vLLM)")

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=status)

    def encode_source(value, **resolve_options):
        """A video through the input policy, then the towers (in a worker thread); the download is deleted after."""
        with resolve_media(value, policy, **resolve_options) as source:
            check_decode_bounds(source, policy, fps=fps or DEFAULT_FPS)
            with engine._encoding:
                return engine.encode(str(source.path), fps=fps)

    async def features_for(url: str):
        if url.startswith(UPLOAD_SCHEME):
            features = store.get(url)
            if features is None:
                raise BadRequest(f"{url}: no such uploaded video (uploads are kept for the {store.capacity} most "
                                 "recent videos); upload it again")
            return features
        features = store.get(url)
        if features is not None:
            return features
        if url.startswith("data:"):
            header, _, payload = url.partition(",")
            if not header.endswith(";base64"):
                raise BadRequest("a data: URL must be base64-encoded (data:video/mp4;base64,...)")
            try:
                data = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                raise BadRequest("the data: URL holds no valid base64") from None
            features = await asyncio.to_thread(encode_source, data, display_name="the video in the data: URL")
        elif url.startswith(("http://", "https://")):
            features = await asyncio.to_thread(encode_source, url, display_name=url)
        else:
            raise BadRequest(f"video url {url[:100]!r}: expected an http(s) URL, a data: URL or {UPLOAD_SCHEME}ID")
        store.put(url, features)
        return features

    async def guarded(function, *args):
        try:
            return await function(*args), None
        except (BadRequest, InputRefused) as refused:
            return None, error(400, str(refused))
        except FileNotFoundError as missing:
            return None, error(400, str(missing))
        except ValueError as invalid:  # the model's checks: a prompt leaving no room for the video, ...
            return None, error(400, str(invalid).splitlines()[0])

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "longvu-hf"}]}

    @app.post("/v1/videos")
    async def upload(file: UploadFile = File(...)):
        with tempfile.TemporaryDirectory(prefix="longvu-upload-") as folder:
            path = Path(folder) / "upload"
            size, cap = 0, policy.max_bytes
            with open(path, "wb") as out:
                while chunk := await file.read(1 << 20):
                    size += len(chunk)
                    if cap is not None and size > cap:
                        return error(413, f"{file.filename}: larger than this server's limit of {cap} bytes")
                    out.write(chunk)
            name = file.filename or "the upload"

            async def encode():
                return await asyncio.to_thread(encode_source, path, upload=True, display_name=name)

            features, failure = await guarded(encode)
        if failure is not None:
            return failure
        video_id = UPLOAD_SCHEME + secrets.token_hex(8)
        store.put(video_id, features)
        return {"id": video_id, "object": "video", "filename": name}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error(400, "the request body must be JSON")
        if not isinstance(body, dict):
            return error(400, "the request body must be a JSON object")

        async def prepare():
            url, question, history, system = parse_messages(body.get("messages"))
            params = sampling_from(body, max_tokens_cap)
            features = await features_for(url)
            request = LongVURequest(video=features, question=question, history=history, system=system)
            # the compression for this prompt (cheap; fails here, as a 400, when the prompt leaves no room)
            return await asyncio.to_thread(engine.prepare_one, request, params)

        prepared, failure = await guarded(prepare)
        if failure is not None:
            return failure
        completion_id = "chatcmpl-" + secrets.token_hex(12)
        created = int(time.time())
        stream = engine.stream_prepared(prepared, request_id=completion_id)

        def usage(answer) -> dict:
            prompt = len(answer.prompt_token_ids) - 1 + answer.compression.num_visual_tokens
            return {"prompt_tokens": prompt, "completion_tokens": len(answer.token_ids),
                    "total_tokens": prompt + len(answer.token_ids)}

        if not body.get("stream"):
            answer = None
            async for _, finished in stream:
                answer = finished or answer
            return {
                "id": completion_id, "object": "chat.completion", "created": created, "model": model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                             "finish_reason": answer.finish_reason}],
                "usage": usage(answer), "compression": answer.compression.to_dict(),
            }

        def chunk(delta: dict, finish_reason=None, **extra) -> str:
            payload = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                       "model": model_name, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
                       **extra}
            return f"data: {json.dumps(payload)}\n\n"

        async def events():
            yield chunk({"role": "assistant", "content": ""})
            async for text, answer in stream:
                if text:
                    yield chunk({"content": text})
                if answer is not None:
                    yield chunk({}, answer.finish_reason, usage=usage(answer), compression=answer.compression.to_dict())
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="converted LongVU folder")
    parser.add_argument("--served-model-name", default=None, help="the model id clients name (default: the folder's)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all interfaces)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs vLLM shards the language model over")
    parser.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"))
    parser.add_argument("--max-model-len", type=int, default=None, help="vLLM's context (default: the model's)")
    parser.add_argument("--fps", type=float, default=None, help="frames sampled per second (default: the processor's)")
    parser.add_argument("--max-tokens-cap", type=int, default=2048, help="largest max_tokens a request may ask")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    import uvicorn

    args = parse_args(argv)
    options = {"max_model_len": args.max_model_len} if args.max_model_len else {}
    engine = AsyncLongVUEngine(args.model, tensor_parallel_size=args.tensor_parallel_size, dtype=args.dtype,
                               **options)
    name = args.served_model_name or Path(args.model).name
    try:
        uvicorn.run(build_app(engine, name, max_tokens_cap=args.max_tokens_cap, fps=args.fps), host=args.host,
                    port=args.port)
    finally:
        engine.shutdown()


if __name__ == "__main__":  # vLLM starts processes that import this module: the guard keeps them from serving
    main()
