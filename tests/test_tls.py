"""TLS on the TCP port and WSS on the WebSocket port, with certificates from a test CA (trustme): JSON and
text mode work the same inside TLS, a client that does not speak TLS is dropped, certificates are
verified, the client SDK speaks ``tcps://`` and ``wss://``, and ``utuvox serve --tls-cert --tls-key``
starts (or says clearly why it cannot)."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio
import trio_websocket
import trustme

from utuvox.client import UtuVoxError, connect
from utuvox.server.tls import TlsConfigError, server_context

from .clients import JsonLines, TextLines, WsJson
from .conftest import login_json, running_server
from .processes import serve, stop


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def pems(ca: trustme.CA, tmp_path: Path) -> dict[str, Path]:
    """The server's certificate chain and key, and the CA's certificate, as PEM files."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem", "ca": tmp_path / "ca.pem"}
    paths["cert"].write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    paths["key"].write_bytes(cert.private_key_pem.bytes())
    paths["ca"].write_bytes(ca.cert_pem.bytes())
    return paths


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@asynccontextmanager
async def tls_server(tmp_path: Path, pems: dict[str, Path], **overrides: object) -> AsyncIterator[object]:
    async with running_server(tmp_path / "data", tls_cert=pems["cert"], tls_key=pems["key"], **overrides) as srv:
        yield srv


async def open_tls(port: int, ca: trustme.CA) -> trio.SSLStream:
    return await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=client_context(ca))


async def test_json_text_and_wss_inside_tls(tmp_path: Path, pems: dict[str, Path], ca: trustme.CA) -> None:
    async with tls_server(tmp_path, pems) as srv:
        assert srv.startup_lines[0].endswith("(TLS)") and "wss://" in srv.startup_lines[1]
        js = JsonLines(await open_tls(srv.tcp_port, ca))  # type: ignore[arg-type]
        await login_json(js, "alice")
        await js.request("create", room="general")
        # A person with `openssl s_client` gets the welcome once the handshake is done, as with nc.
        text = TextLines(await open_tls(srv.tcp_port, ca))  # type: ignore[arg-type]
        assert "Welcome to UtuVox" in await text.recv_line()
        await text.send("/register bob pw")
        await text.expect("Registration successful")
        await text.send("/join general")
        await text.expect("You joined room 'general'")
        async with trio_websocket.open_websocket_url(f"wss://127.0.0.1:{srv.ws_port}",
                                                     ssl_context=client_context(ca)) as raw:
            ws = WsJson(raw)
            await login_json(ws, "carol")
            await ws.request("join", room="general")
            await text.send("hello over tls")
            for client in (js, ws):
                event = await client.recv_until(lambda f: f.get("type") == "message")
                assert event["text"] == "hello over tls" and event["user"] == "bob"
            assert (await ws.request("message", text="and over wss"))["type"] == "ok"
            assert (await text.expect("and over wss")).endswith("] carol: and over wss")


async def test_plain_tcp_on_the_tls_port_is_dropped(tmp_path: Path, pems: dict[str, Path], ca: trustme.CA) -> None:
    async with tls_server(tmp_path, pems, handshake_timeout=1.0) as srv:
        plain = await JsonLines.connect(srv.tcp_port)
        await plain.send({"type": "ping", "id": 1})
        assert await plain.closed()  # no TLS handshake: nothing is answered in clear
        silent = await JsonLines.connect(srv.tcp_port)  # says nothing at all: dropped after the timeout
        assert await silent.closed(timeout=5)
        js = JsonLines(await open_tls(srv.tcp_port, ca))  # type: ignore[arg-type]
        assert (await js.request("ping"))["type"] == "pong"  # and the server serves the next one


async def test_a_client_that_does_not_trust_the_certificate_refuses_it(tmp_path: Path,
                                                                       pems: dict[str, Path]) -> None:
    async with tls_server(tmp_path, pems) as srv:
        with pytest.raises(trio.BrokenResourceError) as failed:
            stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", srv.tcp_port,
                                                         ssl_context=ssl.create_default_context())
            await stream.do_handshake()
        assert isinstance(failed.value.__cause__, ssl.SSLCertVerificationError)


def test_tls_settings_are_checked_before_anything_starts(pems: dict[str, Path], tmp_path: Path) -> None:
    assert server_context(None, None) is None
    with pytest.raises(TlsConfigError, match="both"):
        server_context(pems["cert"], None)
    with pytest.raises(TlsConfigError, match="does not exist"):
        server_context(tmp_path / "nope.pem", pems["key"])
    with pytest.raises(TlsConfigError, match="cannot use"):
        server_context(pems["cert"], pems["ca"])  # a certificate where the key should be
    assert server_context(pems["cert"], pems["key"]).minimum_version >= ssl.TLSVersion.TLSv1_2  # type: ignore[union-attr]


# --- the client SDK -------------------------------------------------------------------------------


async def test_sdk_speaks_tcps_and_wss_and_verifies(tmp_path: Path, pems: dict[str, Path]) -> None:
    async with tls_server(tmp_path, pems) as srv:
        async with connect(f"tcps://127.0.0.1:{srv.tcp_port}", ca=pems["ca"]) as alice:
            await alice.register("alice", "pw")
            await alice.create("general")
            async with connect(f"wss://127.0.0.1:{srv.ws_port}", ca=str(pems["ca"])) as bob:
                await bob.register("bob", "pw")
                await bob.join("general")
                await alice.message("hi bob")
                event = await bob.next_event(timeout=5)
                while getattr(event, "type", None) != "message":
                    event = await bob.next_event(timeout=5)
                assert event.text == "hi bob"  # type: ignore[union-attr]
        # Without the CA the certificate is not trusted, and nothing is sent.
        with pytest.raises((OSError, UtuVoxError)):
            async with connect(f"tcps://127.0.0.1:{srv.tcp_port}", connect_timeout=5):
                pass
        with pytest.raises((OSError, UtuVoxError)):
            async with connect(f"wss://127.0.0.1:{srv.ws_port}", connect_timeout=5):
                pass


async def test_terminal_client_and_bots_take_a_ca(tmp_path: Path, pems: dict[str, Path]) -> None:
    from bots import echo, runner

    async with tls_server(tmp_path, pems) as srv:
        script = "/register pia pw\n/create den\nhello through tls\n"
        result = await trio.run_process(
            [sys.executable, "-m", "utuvox", "client", "--url", f"tcps://127.0.0.1:{srv.tcp_port}",
             "--ca", str(pems["ca"])], stdin=script.encode(), capture_stdout=True, capture_stderr=True,
            cwd=tmp_path, check=False)
        assert result.returncode == 0, result.stderr.decode()
        assert "pia: hello through tls" in result.stdout.decode()
        untrusted = await trio.run_process(
            [sys.executable, "-m", "utuvox", "client", "--url", f"tcps://127.0.0.1:{srv.tcp_port}"],
            stdin=b"", capture_stdout=True, capture_stderr=True, cwd=tmp_path, check=False)
        assert untrusted.returncode == 1 and b"certificate verify failed" in untrusted.stderr

        args = runner.parse(echo.build_parser(), ["--url", f"wss://127.0.0.1:{srv.ws_port}", "--ca",
                                                  str(pems["ca"]), "--user", "echo", "--password", "pw",
                                                  "--register"])
        async with trio.open_nursery() as nursery:
            bot = await nursery.start(partial(runner.run, args, echo.handle))
            assert bot.user == "echo"
            async with connect(f"tcps://127.0.0.1:{srv.tcp_port}", ca=pems["ca"]) as me:
                await me.register("me", "pw")
                await me.msg("echo", "ping?")
                with trio.fail_after(10):
                    async for event in me:
                        if getattr(event, "type", None) == "msg" and event.user == "echo":  # type: ignore[union-attr]
                            assert event.text == "ping?"  # type: ignore[union-attr]
                            break
            nursery.cancel_scope.cancel()


# --- utuvox serve ---------------------------------------------------------------------------------


async def test_serve_with_tls_flags_and_environment(tmp_path: Path, pems: dict[str, Path],
                                                    ca: trustme.CA) -> None:
    proc, port, _, _, tls, irc_port = await serve(tmp_path / "a", "--tls-cert", str(pems["cert"]), "--tls-key",
                                                  str(pems["key"]))
    assert tls
    try:
        js = JsonLines(await open_tls(port, ca))  # type: ignore[arg-type]
        assert (await js.request("ping"))["type"] == "pong"
        irc = await open_tls(irc_port, ca)  # the IRC port speaks TLS too
        await irc.send_all(b"PING :over-tls\r\n")
        with trio.fail_after(5):
            answer = b""
            while b"over-tls" not in answer:
                answer += await irc.receive_some(4096)
        assert b"PONG" in answer
    finally:
        assert await stop(proc) == 0
    env = {"UTUVOX_TLS_CERT": str(pems["cert"]), "UTUVOX_TLS_KEY": str(pems["key"])}
    proc, _, ws_port, _, tls, _ = await serve(tmp_path / "b", env=env)
    assert tls
    try:
        async with trio_websocket.open_websocket_url(f"wss://127.0.0.1:{ws_port}",
                                                     ssl_context=client_context(ca)) as raw:
            assert (await WsJson(raw).request("ping"))["type"] == "pong"
    finally:
        assert await stop(proc, signal.SIGINT) == 0


async def test_serve_refuses_unusable_tls_files_clearly(tmp_path: Path, pems: dict[str, Path]) -> None:
    for args, expected in [
        (["--tls-cert", str(pems["cert"])], b"needs both a certificate (--tls-cert) and its private key"),
        (["--tls-cert", str(pems["cert"]), "--tls-key", str(tmp_path / "missing.pem")], b"does not exist"),
        (["--tls-cert", str(pems["cert"]), "--tls-key", str(pems["ca"])], b"cannot use TLS certificate"),
    ]:
        result = await trio.run_process(
            [sys.executable, "-m", "utuvox", "serve", "--port", "0", "--ws-port", "0", "--irc-port", "0", "--data-dir",
             str(tmp_path / "d"), *args], capture_stdout=True, capture_stderr=True, check=False,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdin=subprocess.DEVNULL)
        assert result.returncode == 2, result
        assert expected in result.stderr and b"Traceback" not in result.stderr
        assert b"PRIVATE KEY" not in result.stderr  # never the key itself


async def test_the_web_client_over_https_allows_wss_to_itself(tmp_path: Path, pems: dict[str, Path],
                                                              ca: trustme.CA) -> None:
    async with tls_server(tmp_path, pems) as srv:
        port = srv.ws_port
        assert srv.startup_lines[-1] == f"Web client at https://127.0.0.1:{port}/"

        async def ask(head: str) -> bytes:
            stream = await open_tls(port, ca)
            await stream.send_all(head.encode())
            answer = b""
            with trio.fail_after(5):
                while True:
                    try:
                        chunk = await stream.receive_some(65536)
                    except trio.BrokenResourceError:
                        break
                    if not chunk:
                        break
                    answer += chunk
                    if answer.startswith(b"HTTP/1.1 101") and b"\r\n\r\n" in answer:
                        break
            await trio.aclose_forcefully(stream)
            return answer

        page = await ask(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n")
        assert page.startswith(b"HTTP/1.1 200 OK") and f"connect-src 'self' wss://127.0.0.1:{port};".encode() in page
        upgrade = (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: {}\r\n\r\n")
        assert (await ask(upgrade.format(f"https://127.0.0.1:{port}"))).startswith(b"HTTP/1.1 101 ")
        assert (await ask(upgrade.format(f"http://127.0.0.1:{port}"))).startswith(b"HTTP/1.1 403 ")
