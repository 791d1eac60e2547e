"""`tether mcp` driven by the official MCP SDK's stdio client, as a coding agent would."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from tether.sandbox import audit

pytestmark = pytest.mark.timeout(90)


def _params(isolated, cwd: Path) -> StdioServerParameters:
    env = {k: v for k, v in isolated.env.items() if k in (
        "PATH", "HOME", "TETHER_HOME", "TETHER_SECRETS_BACKEND", "LANG", "NO_COLOR")}
    return StdioServerParameters(command="tether", args=["mcp"], env=env, cwd=str(cwd))


async def _session_run(isolated, cwd: Path, calls):
    async with stdio_client(_params(isolated, cwd)) as streams:
        read, write = streams if isinstance(streams, tuple) else (streams.read, streams.write)
        async with ClientSession(read, write) as session:
            await session.initialize()
            return await calls(session)


def _data(result) -> dict:
    assert not result.is_error, result.content
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)


async def test_mcp_round_trip_run_files_and_lifecycle(isolated, tmp_path: Path):
    work = tmp_path / "proj"
    work.mkdir()
    (work / "hello.txt").write_text("from the project\n")

    async def calls(s: ClientSession):
        names = {t.name for t in (await s.list_tools()).tools}
        assert {"run", "sandbox_create", "sandbox_list", "sandbox_exec", "sandbox_read_file",
                "sandbox_write_file", "sandbox_start", "sandbox_stop",
                "sandbox_remove"} <= names

        r = _data(await s.call_tool("run", {"command": ["cat", "hello.txt"]}))
        assert (r["exit_code"], r["stdout"]) == (0, "from the project\n")
        r = _data(await s.call_tool("run", {"command": ["sh", "-c", "cat; exit 3"],
                                            "stdin": "in"}))
        assert (r["exit_code"], r["stdout"]) == (3, "in")

        info = _data(await s.call_tool("sandbox_create", {"name": "agent",
                                                          "profile": "restrictive"}))
        assert info["status"] == "stopped"
        w = _data(await s.call_tool("sandbox_write_file", {"name": "agent",
                                                           "path": "/workspace/a.py",
                                                           "content": "print(6 * 7)\n"}))
        assert w["bytes"] == 13
        r = _data(await s.call_tool("sandbox_exec", {"name": "agent",
                                                     "command": ["python3", "a.py"]}))
        assert r["stdout"] == "42\n"
        await s.call_tool("sandbox_exec", {"name": "agent", "command": [
            "sh", "-c", "printf '\\377' > bin; echo text > ~/t"]})
        f = _data(await s.call_tool("sandbox_read_file", {"name": "agent", "path": "~/t"}))
        assert (f["encoding"], f["content"]) == ("utf-8", "text\n")
        f = _data(await s.call_tool("sandbox_read_file", {"name": "agent", "path": "bin"}))
        assert (f["encoding"], f["content"]) == ("base64", "/w==")
        listed = _data(await s.call_tool("sandbox_list", {}))
        assert [b["name"] for b in listed["sandboxes"]] == ["agent"]

        missing = await s.call_tool("sandbox_exec", {"name": "nope", "command": ["true"]})
        assert missing.is_error and "no sandbox named 'nope'" in missing.content[0].text
        outside = await s.call_tool("sandbox_read_file", {"name": "agent",
                                                          "path": "/etc/shadow"})
        assert outside.is_error and "writable layer" in outside.content[0].text

        assert _data(await s.call_tool("sandbox_remove", {"name": "agent"})) == \
            {"removed": "agent"}
        return True

    assert await _session_run(isolated, work, calls)
    records = audit.read()
    assert {r.via for r in records} == {"mcp"}
    assert all("via mcp client " in r.who for r in records)  # the agent's own name
    assert not (Path(os.environ["TETHER_HOME"]) / "state" / "sandboxes" / "agent").exists()
