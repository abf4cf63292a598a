"""Conformance: Home Assistant's DSM library (py-synologydsm-api) against the
emulator.

Proves that the emulator speaks DSM the way a real third-party client
expects: API discovery, login (plain, OTP, device token), shared folders,
listing, upload through the library's own call, download, delete, logout.
Raw HTTP checks cover the MD5 background task and strict Content-Length.

The emulator binary comes from $SYNBACK_BIN, else target/debug/synback.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import struct
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from synology_dsm import SynologyDSM
from synology_dsm.exceptions import (
    SynologyDSMAPIErrorException,
    SynologyDSMLogin2SAFailedException,
    SynologyDSMLogin2SARequiredException,
    SynologyDSMLoginInvalidException,
)

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("SYNBACK_BIN", REPO / "target" / "debug" / "synback"))
USER = "alice"
PASSWORD = "correct horse, battery staple"
OTP_SECRET = "JBSWY3DPEHPK3PXP"


def totp(secret: str, at: float | None = None) -> str:
    """RFC 6238 code (SHA-1, 6 digits, 30 s), as authenticator apps compute it."""
    key = base64.b32decode(secret)
    counter = int((time.time() if at is None else at) // 30)
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return f"{value % 1_000_000:06d}"


class Nas:
    """One `synback nas-emulator` process on a free port."""

    def __init__(self, tmp: Path, *extra: str) -> None:
        pw = tmp / "password"
        pw.write_text(PASSWORD + "\n")
        self.root = tmp / "root"
        self.proc = subprocess.Popen(
            [
                str(BIN), "nas-emulator", "--listen", "127.0.0.1:0",
                "--root", str(self.root), "--share", "backup",
                "--user", USER, "--password-file", str(pw), *extra,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        assert self.url.startswith("http://127.0.0.1:"), self.url
        self.port = int(self.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def nas(tmp_path):
    server = Nas(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def otp_nas(tmp_path):
    server = Nas(tmp_path, "--otp-secret", OTP_SECRET)
    yield server
    server.stop()


@pytest.fixture
def strict_nas(tmp_path):
    server = Nas(tmp_path, "--strict-content-length")
    yield server
    server.stop()


def dsm_for(session: aiohttp.ClientSession, server: Nas, **kwargs) -> SynologyDSM:
    return SynologyDSM(session, "127.0.0.1", server.port, USER, kwargs.pop("password", PASSWORD), **kwargs)


@pytest.mark.asyncio
async def test_library_round_trip(nas):
    async with aiohttp.ClientSession() as session:
        dsm = dsm_for(session, nas)
        assert await dsm.login()
        assert dsm.information.version_string.startswith("DSM 7")

        shares = await dsm.file.get_shared_folders()
        assert [s.name for s in shares] == ["backup"]
        assert shares[0].additional.perm.share_right == "RW"

        payload = os.urandom(300_000)
        assert await dsm.file.upload_file("/backup/conformance", "blob.bin", payload, create_parents=True)
        assert (nas.root / "backup" / "conformance" / "blob.bin").read_bytes() == payload

        files = await dsm.file.get_files("/backup/conformance")
        assert [(f.name, f.is_dir, f.additional.size) for f in files] == [("blob.bin", False, len(payload))]
        assert files[0].path == "/backup/conformance/blob.bin"

        stream = await dsm.file.download_file("/backup/conformance", "blob.bin")
        assert await stream.read() == payload

        assert await dsm.file.delete_file("/backup/conformance", "blob.bin")
        assert await dsm.file.get_files("/backup/conformance") == []
        assert await dsm.logout()


@pytest.mark.asyncio
async def test_library_sees_dsm_errors(nas):
    async with aiohttp.ClientSession() as session:
        with pytest.raises(SynologyDSMLoginInvalidException):
            await dsm_for(session, nas, password="wrong").login()
        dsm = dsm_for(session, nas)
        assert await dsm.login()
        with pytest.raises(SynologyDSMAPIErrorException) as err:
            await dsm.file.get_files("/backup/does-not-exist")
        assert err.value.args[0]["code"] == 408
        # Uploading the same name again without `overwrite`: DSM refuses.
        assert await dsm.file.upload_file("/backup", "twice.txt", b"1")
        with pytest.raises(SynologyDSMAPIErrorException) as err:
            await dsm.file.upload_file("/backup", "twice.txt", b"2")
        assert err.value.args[0]["code"] == 1805


@pytest.mark.asyncio
async def test_otp_login_then_device_token(otp_nas):
    async with aiohttp.ClientSession() as session:
        dsm = dsm_for(session, otp_nas)
        with pytest.raises(SynologyDSMLogin2SARequiredException):
            await dsm.login()
        with pytest.raises(SynologyDSMLogin2SAFailedException):
            await dsm.login(otp_code="000000" if totp(OTP_SECRET) != "000000" else "111111")
        assert await dsm.login(otp_code=totp(OTP_SECRET))
        token = dsm.device_token
        assert token, "enable_device_token=yes must give a device id"
        await dsm.logout()

        again = dsm_for(session, otp_nas, device_token=token)
        assert await again.login(), "the device token skips the OTP"
        assert [s.name for s in await again.file.get_shared_folders()] == ["backup"]
        await again.logout()


async def raw_login(session: aiohttp.ClientSession, server: Nas) -> str:
    async with session.post(
        f"{server.url}/webapi/entry.cgi",
        data={"api": "SYNO.API.Auth", "version": "7", "method": "login",
              "account": USER, "passwd": PASSWORD, "format": "sid"},
    ) as resp:
        body = await resp.json()
    assert body["success"], body
    return body["data"]["sid"]


def upload_form(folder: str, name: str, payload) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("path", folder)
    form.add_field("file", payload, filename=name, content_type="application/octet-stream")
    return form


@pytest.mark.asyncio
async def test_raw_md5_task(nas):
    payload = os.urandom(2_000_000)
    async with aiohttp.ClientSession() as session:
        sid = await raw_login(session, nas)
        api = f"{nas.url}/webapi/entry.cgi"
        async with session.post(
            f"{api}?api=SYNO.FileStation.Upload&version=2&method=upload&_sid={sid}",
            data=upload_form("/backup", "md5.bin", payload),
        ) as resp:
            assert (await resp.json())["success"]

        params = {"api": "SYNO.FileStation.MD5", "version": "2", "_sid": sid}
        async with session.get(api, params={**params, "method": "start", "file_path": '"/backup/md5.bin"'}) as resp:
            task = (await resp.json())["data"]["taskid"]
        for _ in range(500):
            async with session.get(api, params={**params, "method": "status", "taskid": f'"{task}"'}) as resp:
                status = (await resp.json())["data"]
            if status["finished"]:
                break
            await asyncio.sleep(0.01)
        assert status["md5"] == hashlib.md5(payload).hexdigest()
        async with session.get(api, params={**params, "method": "stop", "taskid": task}) as resp:
            assert (await resp.json())["success"]
        async with session.get(api, params={**params, "method": "status", "taskid": task}) as resp:
            assert (await resp.json())["error"]["code"] == 599


async def chunks(payload: bytes):
    for i in range(0, len(payload), 4096):
        yield payload[i : i + 4096]


@pytest.mark.asyncio
async def test_strict_content_length_refuses_chunked_uploads(strict_nas):
    payload = os.urandom(50_000)
    async with aiohttp.ClientSession() as session:
        dsm = dsm_for(session, strict_nas)
        assert await dsm.login()
        # The library sends an async iterator chunked (no Content-Length).
        with pytest.raises(SynologyDSMAPIErrorException) as err:
            await dsm.file.upload_file("/backup", "chunked.bin", chunks(payload))
        assert err.value.args[0]["code"] == 1800
        assert not (strict_nas.root / "backup" / "chunked.bin").exists()
        # Bytes have a known length and go through.
        assert await dsm.file.upload_file("/backup", "sized.bin", payload)

        sid = await raw_login(session, strict_nas)
        url = f"{strict_nas.url}/webapi/entry.cgi?api=SYNO.FileStation.Upload&version=2&method=upload&_sid={sid}"
        async with session.post(url, data=upload_form("/backup", "raw.bin", chunks(payload)), chunked=True) as resp:
            assert (await resp.json())["error"]["code"] == 1800


@pytest.mark.asyncio
async def test_chunked_upload_accepted_when_not_strict(nas):
    payload = os.urandom(50_000)
    async with aiohttp.ClientSession() as session:
        dsm = dsm_for(session, nas)
        assert await dsm.login()
        assert await dsm.file.upload_file("/backup", "chunked.bin", chunks(payload))
        assert (nas.root / "backup" / "chunked.bin").read_bytes() == payload
