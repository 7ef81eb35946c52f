"""The input policy (`longvu_hf.media_inputs`), one test per class of attack a public page meets.

Nothing here needs the network: names are resolved by a fake `socket.getaddrinfo`, and downloads come from a local
HTTP server on 127.0.0.1 that the tests admit by its port (`media_inputs._ADMITTED_FOR_TESTS`); every other
internal address, that server's other ports included, stays refused.
"""

from __future__ import annotations

import http.server
import ipaddress
import os
import socket
import stat
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from conftest import make_video

from longvu_hf import cli, media_inputs
from longvu_hf.media_inputs import (
    MAX_REDIRECTS,
    InputPolicy,
    InputRefused,
    check_decode_bounds,
    open_container,
    public_address_refusal,
    resolve_media,
)
from longvu_hf.processing import LongVUVideoProcessor
from longvu_hf.processing import video_decoding

NOTES = b"These are my notes, not a video.\n" * 40
DRIP_SECONDS = 20  # how long the slow server drips before it gives up (far beyond the tests' 1 s deadline)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("clip") / "clip.mp4", fps=8, num_frames=16)


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """Where `tempfile` puts this test's temporary folders, to see what is left behind."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def no_connections(*args, **kwargs):
    raise AssertionError(f"a connection was attempted: {args}")


def fake_dns(monkeypatch, names: dict[str, list[str]]) -> list[str]:
    """Resolves `names` as given; numeric hosts as the system does; anything else fails. Returns the names looked up."""
    real = socket.getaddrinfo
    looked_up = []

    def getaddrinfo(host, port, *args, **kwargs):
        looked_up.append(host)
        if host in names:
            return [
                (socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))
                for address in names[host]
            ]
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return looked_up


# ----------------------------------------------------------------------------------------------------------------
# A local server with the answers an attacker would give
# ----------------------------------------------------------------------------------------------------------------


class Server:
    def __init__(self, clip: Path, files: Path):
        self.clip_bytes = clip.read_bytes()
        self.files = files
        self.hosts: list[str] = []
        self.requests: list[str] = []
        self.dripped: list[int] = []  # bytes each slow answer sent before the client hung up (or it gave up)
        self.drips_done = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.hosts.append(self.headers.get("Host"))
                outer.requests.append(self.path)
                parts = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(parts.query))
                route = getattr(outer, "route_" + parts.path.strip("/").replace("-", "_").replace(".", "_"), None)
                if route is None:
                    self.send_error(404)
                    return
                try:
                    route(self, query)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/{path.lstrip('/')}"

    @staticmethod
    def send(handler, body: bytes, content_type: str, length: int | None = None):
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        if length is not None:
            handler.send_header("Content-Length", str(length))
        handler.end_headers()
        handler.wfile.write(body)

    # -- routes --------------------------------------------------------------------------------------------------

    def route_clip_mp4(self, handler, query):
        self.send(handler, self.clip_bytes, "video/mp4", len(self.clip_bytes))

    def route_notes_txt(self, handler, query):
        self.send(handler, NOTES, "text/plain", len(NOTES))

    def route_notes_disguised(self, handler, query):  # text sent as a video: the sniffing must catch it
        self.send(handler, NOTES, "application/octet-stream", len(NOTES))

    def route_file(self, handler, query):  # any file of the test's folder, as binary (a playlist, a concat list)
        body = (self.files / query["name"]).read_bytes()
        self.send(handler, body, "application/octet-stream", len(body))

    def route_redirect(self, handler, query):
        handler.send_response(302)
        handler.send_header("Location", query["to"])
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def route_chain(self, handler, query):  # ?n=3: three redirects, then the clip
        left = int(query["n"])
        handler.send_response(302)
        handler.send_header("Location", f"/chain?n={left - 1}" if left > 1 else "/clip.mp4")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def route_big(self, handler, query):  # ?length=1: announces its size
        size = 3 * 1024 * 1024
        body = self.clip_bytes + bytes(size - len(self.clip_bytes))
        self.send(handler, body, "video/mp4", size if query.get("length") else None)

    def route_drip(self, handler, query):  # one byte of body every 0.1 s, for DRIP_SECONDS
        handler.send_response(200)
        handler.send_header("Content-Type", "video/mp4")
        handler.end_headers()
        self._drip(handler, self.clip_bytes)

    def route_drip_headers(self, handler, query):  # the headers never end
        handler.wfile.write(b"HTTP/1.0 200 OK\r\nX-Slow: ")
        self._drip(handler, b"a" * 10**6)

    def _drip(self, handler, data: bytes):
        end, sent = time.monotonic() + DRIP_SECONDS, 0
        try:
            for byte in data:
                if time.monotonic() > end:
                    return
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
                sent += 1
                time.sleep(0.1)
        finally:
            self.dripped.append(sent)
            self.drips_done.set()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(clip, tmp_path, monkeypatch):
    files = tmp_path / "served"
    files.mkdir()
    running = Server(clip, files)
    # This server alone is admitted: loopback on any other port, and every other internal address, stays refused.
    monkeypatch.setattr(media_inputs, "_ADMITTED_FOR_TESTS", frozenset({("127.0.0.1", running.port)}))
    yield running
    running.close()


# ----------------------------------------------------------------------------------------------------------------
# Addresses
# ----------------------------------------------------------------------------------------------------------------

INTERNAL_URLS = [
    "http://127.0.0.1/",
    "http://127.0.0.1./",
    "http://127.1/",
    "http://2130706433/",  # 127.0.0.1 as one decimal number
    "http://017700000001/",  # octal
    "http://0x7f000001/",  # hex
    "http://0x7f.1/",
    "http://0177.0.0.1/",
    "http://0/",
    "http://0.0.0.0:8080/",
    "http://[::1]/",
    "http://[::]/",
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped
    "http://[::ffff:7f00:1]/",
    "http://[::127.0.0.1]/",  # IPv4-compatible
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
    "http://[2002:a00:1::]/",  # 6to4 of 10.0.0.1
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://[ff02::1]/",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://10.0.0.1/",
    "http://172.16.5.4/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",  # shared address space (carrier-grade NAT)
    "http://224.0.0.1/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
    "https://127.0.0.1:8443/clip.mp4",
    "http://localhost/",
    "http://localhost./",
    "http://LOCALHOST:80/",
    "http://intranet.example/",
    "http://rebinding.example/",  # one public, one internal address
    "http://mapped.example/",
    "http://nat64.example/",
    "http://unknown-name.example/",  # does not resolve: the same answer, no probing of internal names
]


@pytest.mark.parametrize("url", INTERNAL_URLS)
def test_internal_addresses_are_refused_in_every_spelling(url, monkeypatch):
    fake_dns(monkeypatch, {
        "localhost": ["127.0.0.1", "::1"],
        "intranet.example": ["10.1.2.3"],
        "rebinding.example": ["93.184.216.34", "127.0.0.1"],
        "mapped.example": ["::ffff:169.254.169.254"],
        "nat64.example": ["64:ff9b::7f00:1"],
    })
    monkeypatch.setattr(socket, "create_connection", no_connections)
    with pytest.raises(InputRefused) as refused:
        resolve_media(url, InputPolicy.public_page())
    assert str(refused.value) == (
        f"Video URL '{url}' refused: its host is not a public internet address (only public http(s) addresses are "
        "fetched)"
    )


@pytest.mark.parametrize("url", ["http://public@127.0.0.1/", "http://user:secret@example.com@10.0.0.1/"])
def test_urls_with_user_names_are_refused(url, monkeypatch):
    monkeypatch.setattr(socket, "create_connection", no_connections)
    with pytest.raises(InputRefused, match="user name or password") as refused:
        resolve_media(url, InputPolicy.public_page())
    assert "secret" not in str(refused.value)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/clip.mp4", "data:video/mp4;base64,AAAA",
                                 "gopher://127.0.0.1:6379/_INFO", "concat:/etc/passwd|/etc/hosts"])
def test_other_schemes_are_refused(url):
    with pytest.raises(InputRefused, match="only http:// and https:// URLs"):
        resolve_media(url, InputPolicy.local_user())


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "64:ff9b::808:808",
                                     "2002:808:808::1", "::ffff:8.8.8.8"])
def test_public_addresses_are_public(address):
    assert public_address_refusal(ipaddress.ip_address(address)) is None


def test_a_name_is_resolved_once_and_the_checked_address_is_the_one_connected(server, monkeypatch):
    looked_up = fake_dns(monkeypatch, {"videos.example": ["127.0.0.1"]})
    connected = []
    real_connect = socket.create_connection
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: (connected.append(address),
                                                                                real_connect(address, *a, **k))[1])
    with resolve_media(server.url("clip.mp4", host="videos.example"), InputPolicy.public_page()) as source:
        assert source.kind == "video" and source.num_frames == 16
    assert [host for host in looked_up if host != "127.0.0.1"] == ["videos.example"]  # no second lookup
    assert connected == [("127.0.0.1", server.port)]
    assert server.hosts == [f"videos.example:{server.port}"]  # the name travels in the Host header


def test_refused_addresses_answer_alike_whether_a_port_is_open_or_not(server, monkeypatch):
    # The admitted server's port is open; only ("127.0.0.1", its port) is admitted, so 127.0.0.2 and localhost
    # names of the same open port stay refused, exactly like a closed port.
    fake_dns(monkeypatch, {})
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    messages = []
    for port in (server.port, closed_port):
        url = f"http://127.0.0.2:{port}/clip.mp4"
        with pytest.raises(InputRefused) as refused:
            resolve_media(url, InputPolicy.public_page())
        messages.append(str(refused.value).replace(str(port), "PORT"))
    assert messages[0] == messages[1]
    assert server.requests == []


# ----------------------------------------------------------------------------------------------------------------
# Downloads: redirects, deadline, size, what is kept
# ----------------------------------------------------------------------------------------------------------------


def test_a_download_goes_to_a_private_file_that_close_deletes(server, private_tmp):
    source = resolve_media(server.url("clip.mp4"), InputPolicy.public_page())
    assert (source.kind, source.temporary, source.num_frames) == ("video", True, 16)
    assert source.display_name == server.url("clip.mp4")
    assert source.path.is_file() and source.path.read_bytes() == server.clip_bytes
    assert private_tmp in source.path.parents
    assert stat.S_IMODE(source.path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(source.path.stat().st_mode) == 0o600
    source.close()
    source.close()  # idempotent
    assert list(private_tmp.iterdir()) == []


def test_redirects_are_followed_and_every_hop_checked(server, private_tmp, monkeypatch):
    fake_dns(monkeypatch, {"intranet.example": ["10.0.0.7"]})
    policy = InputPolicy.public_page()
    with resolve_media(server.url(f"chain?n={MAX_REDIRECTS}"), policy) as source:
        assert source.num_frames == 16
    with pytest.raises(InputRefused, match=f"more than {MAX_REDIRECTS} redirects"):
        resolve_media(server.url(f"chain?n={MAX_REDIRECTS + 1}"), policy)
    other_port = server.url("clip.mp4").replace(str(server.port), str(server.port + 1 if server.port < 65535 else 1))
    for target in ["http://10.0.0.1/clip.mp4", "http://169.254.169.254/latest/meta-data/", "http://[::1]/clip.mp4",
                   "http://2130706433/clip.mp4", "http://intranet.example/clip.mp4", other_port]:
        requests_before = len(server.requests)
        with pytest.raises(InputRefused, match="not a public internet address"):
            resolve_media(server.url("redirect?to=" + urllib.parse.quote(target, safe="")), policy)
        assert len(server.requests) == requests_before + 1  # the redirect itself, nothing after it
    for target in ["file:///etc/passwd", "ftp://example.com/x"]:
        with pytest.raises(InputRefused, match="redirects to a '(file|ftp):' URL"):
            resolve_media(server.url("redirect?to=" + urllib.parse.quote(target, safe="")), policy)
    assert list(private_tmp.iterdir()) == []


@pytest.mark.parametrize("route", ["drip", "drip-headers"])
def test_a_slow_drip_stops_at_the_deadline(server, private_tmp, route):
    # One byte every 0.1 s, for DRIP_SECONDS (200 bytes) if nobody stops it: one deadline for the whole download
    # (headers included) hangs up after 1 s, about 10 bytes in.
    with pytest.raises(InputRefused, match="the download took longer than 1 s"):
        resolve_media(server.url(route), InputPolicy.public_page(download_timeout=1.0))
    assert list(private_tmp.iterdir()) == []
    assert server.drips_done.wait(DRIP_SECONDS + 5)  # the server notices the hang-up at its next byte
    assert server.dripped[0] < 50, server.dripped


def test_a_stalled_tls_handshake_stops_at_the_deadline(monkeypatch):
    # A "server" that answers the TLS client hello with a record announcing 16,000 bytes, then sends one byte every
    # 0.1 s: every read gets data in time, only the deadline for the whole download ends it.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    monkeypatch.setattr(media_inputs, "_ADMITTED_FOR_TESTS", frozenset({("127.0.0.1", port)}))
    sent, done = [], threading.Event()

    def serve():
        connection, _ = listener.accept()
        count, end = 0, time.monotonic() + DRIP_SECONDS
        try:
            connection.recv(4096)  # the client hello
            connection.sendall(b"\x16\x03\x03\x3e\x80")
            while time.monotonic() < end:
                connection.sendall(b"\x02")
                count += 1
                time.sleep(0.1)
        except OSError:
            pass
        finally:
            sent.append(count)
            connection.close()
            done.set()

    threading.Thread(target=serve, daemon=True).start()
    try:
        with pytest.raises(InputRefused, match="the download took longer than 1 s"):
            resolve_media(f"https://127.0.0.1:{port}/clip.mp4", InputPolicy.public_page(download_timeout=1.0))
        assert done.wait(DRIP_SECONDS + 5)
        assert sent[0] < 50, sent
    finally:
        listener.close()


@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "no-content-length"])
def test_an_oversized_download_is_refused(server, private_tmp, announced):
    policy = InputPolicy.public_page(max_bytes=1024 * 1024)
    with pytest.raises(InputRefused, match="over the 1 MB limit"):
        resolve_media(server.url("big" + ("?length=1" if announced else "")), policy)
    assert list(private_tmp.iterdir()) == []
    with resolve_media(server.url("big?length=1"), InputPolicy.public_page()) as source:  # under the default cap
        assert source.num_frames == 16


def test_network_and_local_paths_can_be_turned_off(clip, tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "create_connection", no_connections)
    with pytest.raises(InputRefused, match="fetching URLs is turned off"):
        resolve_media("https://example.com/clip.mp4", InputPolicy(allow_network=False))
    # Paths: the same answer for a file that exists, one that does not and a folder, before any file system access.
    policy = InputPolicy.public_page()
    answers = set()
    for path in (clip, tmp_path / "missing.mp4", tmp_path):
        with pytest.raises(InputRefused) as refused:
            resolve_media(str(path), policy, display_name="X")
        answers.add(str(refused.value))
    assert answers == {"Video 'X' refused: paths on the server are turned off here (upload the file)"}
    # The user's own upload is read, size-capped.
    with resolve_media(clip, policy, upload=True) as source:
        assert (source.display_name, source.temporary) == ("clip.mp4", False)
    with pytest.raises(InputRefused, match="over the 1 kB limit"):
        resolve_media(clip, InputPolicy.public_page(max_bytes=1024), upload=True)


def test_an_empty_input_is_no_video():
    for value in ("", "  ", b""):
        with pytest.raises(InputRefused, match="No video was given|the file is empty"):
            resolve_media(value, InputPolicy.local_user())


def test_bytes_and_frame_folders(clip, tmp_path, private_tmp):
    with resolve_media(clip.read_bytes(), InputPolicy.public_page()) as source:
        assert (source.kind, source.temporary, source.num_frames, source.width, source.height) == (
            "video", True, 16, 64, 36)
        assert private_tmp in source.path.parents
    assert list(private_tmp.iterdir()) == []
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    for index in range(3):
        Image.new("RGB", (32, 24), (index * 50, 0, 0)).save(folder / f"{index:05d}.jpg")
    source = resolve_media(folder, InputPolicy.local_user())
    assert (source.kind, source.num_frames, source.width, source.height) == ("frames", 3, 32, 24)
    with pytest.raises(InputRefused, match="paths on the server are turned off"):
        resolve_media(folder, InputPolicy.public_page())


# ----------------------------------------------------------------------------------------------------------------
# Content: text, playlists, concat lists
# ----------------------------------------------------------------------------------------------------------------


def test_text_is_not_a_video_from_a_url_a_path_or_bytes(server, tmp_path):
    policy = InputPolicy.local_user()
    with pytest.raises(InputRefused, match=r"Could not open video '.*notes.txt': not a video \(the server sent text"):
        resolve_media(server.url("notes.txt"), policy)
    with pytest.raises(InputRefused, match=r"notes-disguised': not a video \(it holds text\)"):
        resolve_media(server.url("notes-disguised"), policy)
    notes = tmp_path / "notes.mp4"
    notes.write_bytes(NOTES)
    with pytest.raises(InputRefused, match=r"'.*notes.mp4': not a video \(it holds text\)"):
        resolve_media(notes, policy)
    with pytest.raises(InputRefused, match=r"not a video \(it holds text\)"):
        resolve_media(NOTES, policy)
    html = tmp_path / "page.mp4"
    html.write_text("<!doctype html><html><body>Hello</body></html>\n")
    with pytest.raises(InputRefused, match="not a video"):
        resolve_media(html, policy)


def test_the_cli_says_not_a_video_in_one_line(server, capsys):
    assert cli.main(["ask", server.url("notes.txt"), "What happens?", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a video" in err[0] and server.url("notes.txt") in err[0], err


def playlists(clip: Path, folder: Path) -> dict[str, Path]:
    """Files that make an unrestricted FFmpeg open another file of the server (here: the clip)."""
    nested = folder / "nested"
    nested.mkdir(exist_ok=True)
    relative = os.path.relpath(clip, nested)
    hls = "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:10.0,\n{}\n#EXT-X-ENDLIST\n"
    files = {
        "hls-file-url": (folder / "file_url.m3u8", hls.format(f"file://{clip}")),
        "hls-absolute": (folder / "absolute.m3u8", hls.format(clip)),
        "hls-relative": (nested / "relative.m3u8", hls.format(relative)),
        "hls-disguised": (folder / "disguised.mp4", hls.format(clip)),
        "ffconcat": (folder / "list.ffconcat", f"ffconcat version 1.0\nfile '{clip}'\n"),
        "ffconcat-relative": (nested / "list.txt", f"ffconcat version 1.0\nfile '{relative}'\n"),
    }
    for path, text in files.values():
        path.write_text(text)
    return {kind: path for kind, (path, _) in files.items()}


PLAYLIST_KINDS = ["hls-file-url", "hls-absolute", "hls-relative", "hls-disguised", "ffconcat", "ffconcat-relative"]


def test_an_unrestricted_ffmpeg_would_read_the_clip_through_a_playlist(clip, tmp_path):
    # The attack the allow-lists stop: without them FFmpeg's HLS demuxer opens the file the playlist names.
    import av

    with av.open(str(playlists(clip, tmp_path)["hls-absolute"])) as container:
        assert container.format.name == "hls"
        assert sum(1 for _ in container.decode(video=0)) == 16


@pytest.mark.parametrize("delivery", ["path", "upload", "bytes", "url"])
@pytest.mark.parametrize("kind", PLAYLIST_KINDS)
def test_playlists_and_concat_lists_are_not_videos(clip, tmp_path, server, kind, delivery):
    path = playlists(clip, server.files)[kind]
    policy = InputPolicy.local_user()
    value = {"path": str(path), "upload": str(path), "bytes": path.read_bytes(),
             "url": server.url("file?name=" + urllib.parse.quote(str(path.relative_to(server.files))))}[delivery]
    with pytest.raises(InputRefused, match="not a video"):
        resolve_media(value, policy, upload=delivery == "upload")


@pytest.mark.parametrize("kind", PLAYLIST_KINDS)
def test_ffmpeg_itself_opens_no_playlist_even_past_the_sniffing(clip, tmp_path, kind):
    # Each layer on its own: FFmpeg's format allow-list refuses the playlist while opening it, before its demuxer
    # reads the header (where HLS opens its segments), for every decoder.
    path = playlists(clip, tmp_path)[kind]
    with pytest.raises(ValueError) as refused:
        open_container(str(path), "'x'")
    if kind == "hls-disguised":  # FFmpeg probes HLS only under a playlist's name: this is no format at all
        assert "Could not open video 'x': not a readable video file" in str(refused.value)
    else:
        assert "Could not open video 'x': not a video (not one of the accepted" in str(refused.value)
    for backend in video_decoding.available_video_backends():
        source_class = {"pyav": video_decoding.PyAVFrameSource, "torchcodec": video_decoding.TorchCodecFrameSource,
                        "decord": video_decoding.DecordFrameSource}[backend]
        with pytest.raises(ValueError, match="Could not open video"):
            source_class(str(path), "'x'")
    with pytest.raises(ValueError, match="not a video"):  # the processor resolves its inputs too
        LongVUVideoProcessor()(str(path))


# ----------------------------------------------------------------------------------------------------------------
# Decode bounds
# ----------------------------------------------------------------------------------------------------------------


def test_fps_and_frame_bombs_are_refused_before_decoding(tmp_path):
    long_clip = make_video(tmp_path / "long.mp4", fps=25, num_frames=250, width=32, height=18)  # 10 s
    source = resolve_media(long_clip, InputPolicy.local_user())
    assert (source.duration, source.num_frames) == (10.0, 250)
    public = InputPolicy.public_page()
    assert check_decode_bounds(source, public, fps=1.0) == 10
    assert check_decode_bounds(source, public, fps=None, num_frames=8) == 8
    with pytest.raises(InputRefused, match="fps=1000 is over the limit of 4"):
        check_decode_bounds(source, public, fps=1000.0)
    # A frame bomb: every frame, or a high rate allowed by the fps cap, over the frame cap.
    with pytest.raises(InputRefused, match="250 frames to decode, over the limit of 100"):
        check_decode_bounds(source, InputPolicy.public_page(max_frames=100), fps=None)
    with pytest.raises(InputRefused, match="40 frames to decode, over the limit of 30"):
        check_decode_bounds(source, InputPolicy.public_page(max_frames=30), fps=4.0)
    with pytest.raises(InputRefused, match="over the limit of 30"):
        check_decode_bounds(source, InputPolicy.public_page(max_frames=30), fps=None, num_frames=31)
    # A rate above the video's own decodes each frame once: the count is the frame count, not seconds x fps.
    assert check_decode_bounds(source, InputPolicy.local_user(), fps=1000.0) == 250
    with pytest.raises(InputRefused, match="10 s long, over the limit of 5 s"):
        check_decode_bounds(source, InputPolicy.public_page(max_seconds=5), fps=1.0)
    with pytest.raises(InputRefused, match="32x18 pixels are over the limit of 500 pixels"):
        check_decode_bounds(source, InputPolicy.public_page(max_pixels=500), fps=1.0)
    # Under a policy with caps, the frames are counted (not taken from the header), and counting stops once the
    # video is known to be too long.
    counted = resolve_media(make_video(tmp_path / "long.mkv", fps=25, num_frames=250, width=32, height=18),
                            InputPolicy.public_page(), upload=True)
    assert (counted.num_frames, counted.duration) == (250, 10.0)
    short_policy = InputPolicy.public_page(max_seconds=2)
    too_long = resolve_media(long_clip, short_policy, upload=True)
    assert 50 < too_long.num_frames < 250
    with pytest.raises(InputRefused, match="over the limit of 2 s"):
        check_decode_bounds(too_long, short_policy, fps=1.0)
    # A source rate no camera writes, where the fps is capped.
    fast = resolve_media(make_video(tmp_path / "fast.mp4", fps=300, num_frames=30, width=32, height=18),
                         InputPolicy.local_user())
    with pytest.raises(InputRefused, match="frame rate of 300 fps is over the limit of 240"):
        check_decode_bounds(fast, public, fps=1.0)
    for fps in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InputRefused, match="fps must be a positive number"):
            check_decode_bounds(source, InputPolicy.local_user(), fps=fps)


# ----------------------------------------------------------------------------------------------------------------
# Decoding loops end
# ----------------------------------------------------------------------------------------------------------------


class EarlySeekingContainer:
    """A container whose seeks land at the start of the file, before the keyframe asked for (FFmpeg's HLS demuxer
    seeks to the start of a segment): the decoder must go forward, never seek to the same keyframe again."""

    MAX_SEEKS = 200  # far more than the clip's keyframes: reaching it means a seek loop

    def __init__(self, container):
        self._container = container
        self.seeks = 0

    def __getattr__(self, name):
        return getattr(self._container, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._container.close()

    def seek(self, offset, **kwargs):
        self.seeks += 1
        if self.seeks > self.MAX_SEEKS:
            raise AssertionError("endless seek loop")
        return self._container.seek(0, stream=kwargs.get("stream"), backward=True, any_frame=False)


@pytest.mark.parametrize("indices", [[5, 17, 33, 58], [59], [0, 1, 58, 59], list(range(3, 60, 7))])
def test_decoding_ends_when_seeks_land_early(tmp_path, indices):
    path = make_video(tmp_path / "gops.mp4", fps=10, num_frames=60, gop=5)  # 12 keyframe intervals
    source = video_decoding.PyAVFrameSource(str(path), "'gops.mp4'")
    assert len(source._keyframes) == 12
    open_normally = source._open
    opened = []
    source._open = lambda: (opened.append(EarlySeekingContainer(open_normally())), opened[-1])[1]
    frames = {slot: frame for batch in source.iter_frames(np.array(indices), 4) for slot, frame in batch}
    expected = video_decoding.PyAVFrameSource(str(path), "'gops.mp4'")
    want = {slot: frame for batch in expected.iter_frames(np.array(indices), 4) for slot, frame in batch}
    assert sorted(frames) == list(range(len(indices)))
    for slot in want:
        np.testing.assert_array_equal(frames[slot], want[slot])
    assert all(container.seeks <= 12 for container in opened)


def test_seeks_skip_whole_gops_on_normal_files(tmp_path):
    # The bound on seeks keeps the fast path: one seek per keyframe interval that holds a wanted frame at most.
    path = make_video(tmp_path / "gops.mp4", fps=10, num_frames=60, gop=5)
    source = video_decoding.PyAVFrameSource(str(path), "'gops.mp4'")
    seeks = []
    open_normally = source._open

    def counting_open():
        container = open_normally()
        real_seek = container.seek

        class Counting:
            def __getattr__(self, name):
                return getattr(container, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc_info):
                container.close()

            def seek(self, *args, **kwargs):
                seeks.append(args)
                return real_seek(*args, **kwargs)

        return Counting()

    source._open = counting_open
    indices = np.array([2, 27, 52])
    got = [slot for batch in source.iter_frames(indices, 2) for slot, _ in batch]
    assert got == [0, 1, 2] and len(seeks) == 2


def test_frame_images_and_images_are_read_under_the_policy(server, monkeypatch):
    from PIL import Image

    fake_dns(monkeypatch, {})
    Image.new("RGB", (40, 30), (200, 10, 10)).save(server.files / "frame.png")
    processor = LongVUVideoProcessor()
    frames = [server.url("file?name=frame.png")] * 2  # a video given as a list of frame URLs
    assert processor([[frames]], num_frames=2)["video_sizes"].tolist() == [[30, 40]]
    assert processor.preprocess_images(frames[0])["image_sizes"].tolist() == [[30, 40]]
    for internal in ["http://169.254.169.254/frame.png", "http://10.0.0.1/frame.png", "file:///etc/passwd"]:
        with pytest.raises(InputRefused, match="refused"):
            processor([[[internal, internal]]], num_frames=2)
        with pytest.raises(InputRefused, match="refused"):
            processor.preprocess_images(internal)
