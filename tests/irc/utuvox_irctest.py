"""The irctest controller for UtuVox: starts ``utuvox serve`` on the port irctest gives, and declares
the capabilities and ISUPPORT tokens UtuVox implements (a declared one that fails is a failure)."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from irctest import cases, patma
from irctest.basecontrollers import BaseServerController, DirectoryBasedController, NotImplementedByController
from irctest.specifications import Capabilities, OptionalBehaviors

from utuvox.server.settings import unthrottled_env

OPER = ("operuser", "operpassword")  # the operator irctest's OPER tests expect


class UtuVoxController(BaseServerController, DirectoryBasedController):
    software_name = "UtuVox"
    _port_wait_interval = 0.05
    supported_sasl_mechanisms = {"PLAIN"}
    supports_sts = False
    capabilities = frozenset((
        Capabilities.ACCOUNT_NOTIFY,
        Capabilities.ACCOUNT_TAG,
        Capabilities.AWAY_NOTIFY,
        Capabilities.BATCH,
        Capabilities.ECHO_MESSAGE,
        Capabilities.EXTENDED_JOIN,
        Capabilities.LABELED_RESPONSE,
        Capabilities.MESSAGE_TAGS,
        Capabilities.SERVER_TIME,
    ))
    optional_behaviors = frozenset((
        OptionalBehaviors.CAP_REQ_MINUS,
        OptionalBehaviors.SASL_AFTER_REGISTRATION,
    ))
    isupport = {
        "BOT": "B",
        "CASEMAPPING": "ascii",
        "MSGREFTYPES": "msgid,timestamp",
        "PREFIX": "(ov)@+",
        "TARGMAX": patma.ANYSTR,
        "UTF8ONLY": None,
        "WHOX": None,
    }

    def run(self, hostname: str, port: int, *, password: str | None, ssl: bool, run_services: bool,
            faketime: str | None, websocket_hostname: str | None, websocket_port: int | None) -> None:
        if password is not None:
            raise NotImplementedByController("PASS as a server password (UtuVox's PASS is account:password)")
        if self.test_config.account_registration_requires_email:
            raise NotImplementedByController("e-mail verification (UtuVox accounts have no e-mail)")
        assert self.proc is None
        self.port = port
        self.hostname = hostname
        self.create_config()
        assert self.directory is not None
        # The JSON port registers accounts (registerUser, the operator account).
        (_, self.json_port) = self.get_hostname_and_port()
        args = ["--host", hostname, "--irc-port", str(port), "--port", str(self.json_port),
                "--ws-port", str(websocket_port or 0),
                "--data-dir", str(self.directory)]
        if ssl:
            self.gen_ssl()
            args += ["--tls-cert", str(self.pem_path), "--tls-key", str(self.key_path)]
        # Flood control off, as irctest's controllers do for other servers (ergo's fakelag): the suite
        # tests the protocol, and logs in and talks faster than a public server's rates allow.
        env = {**os.environ, **unthrottled_env(), "UTUVOX_ARGON2_MEMORY_KIB": "1024", "UTUVOX_ARGON2_TIME_COST": "1",
               "UTUVOX_LOG_LEVEL": "WARNING", "UTUVOX_IRC_SERVER_NAME": "My.Little.Server",
               "UTUVOX_SESSION_LOGINS_BURST": "1000",
               "UTUVOX_USER_LOGINS_BURST": "1000", "UTUVOX_LOGIN_FREE_FAILURES": "1000",
               "UTUVOX_ADDRESS_FREE_FAILURES": "1000",
               "UTUVOX_IRC_REGISTER_BEFORE_CONNECT": str(self.test_config.account_registration_before_connect)}
        self.proc = self.execute([sys.executable, "-m", "utuvox", "serve", *args], env=env)
        pids = os.environ.get("UTUVOX_IRCTEST_PIDS")
        if pids:  # irctest may leave a server running after a skip: .ci/irctest ends what is listed
            with open(pids, "a") as out:
                out.write(f"{self.proc.pid}\n")
        self.wait_for_port()
        self._register_oper()

    def _register_oper(self) -> None:
        """An admin account for OPER, registered with the admin key over the JSON port."""
        assert self.directory is not None
        key = (Path(self.directory) / "admin_key.txt").read_text().strip()
        self._register(*OPER, admin_key=key)

    def _register(self, name: str, password: str, admin_key: str | None = None) -> dict[str, Any]:
        request: dict[str, Any] = {"type": "register", "username": name, "password": password}
        if admin_key is not None:
            request["admin_key"] = admin_key
        with socket.create_connection((self.hostname, self.json_port), timeout=10) as sock:
            sock.sendall(json.dumps(request).encode() + b"\n")
            answer = b""
            while b"\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        return json.loads(answer.split(b"\n")[0])

    def registerUser(self, case: cases.BaseServerTestCase, username: str,  # type: ignore[override]
                     password: str | None = None) -> None:
        assert password
        answer = self._register(username, password)
        assert answer.get("type") == "logged_in", answer

    def wait_for_services(self) -> None:
        pass  # accounts are the server's own


def get_irctest_controller_class() -> type[UtuVoxController]:
    return UtuVoxController


__all__: list[Any] = ["get_irctest_controller_class"]
