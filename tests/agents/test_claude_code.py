"""Claude Code itself (``claude -p``) through a real ``nexus serve`` on ``/v1/messages``.

Nexus runs as a process in front of a simulated vLLM serving one local model, with every
``claude-*`` model id aliased to it, as a user would configure it. Claude Code gets a fresh
``HOME``, a scratch working directory and nothing but loopback (see conftest.py). The
simulated backend's answers are deterministic, so what Claude Code prints is checked word
for word against the conversation the backend received.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio
from nexus_process import Nexus, start_nexus_process

from nexus_trio.testing import Flavor, SimModel, SimulatedBackend, expected_answer
from nexus_trio.testing._text import tool_call_id

pytestmark = pytest.mark.agents

LOCAL_MODEL = "qwen3-coder:30b"
CLAUDE_MODEL = "claude-sonnet-4-5"  # any claude-* id: the alias maps it
ALIASES = {"claude-*": LOCAL_MODEL}
# Claude Code asks for max_tokens 32000 on top of a prompt of some 20,000 words.
CONTEXT_LENGTH = 262_144
CLAUDE_SECONDS = 120  # a bound against a hang; a run takes a second or two
NOTE = "The lighthouse keeper counts 7 ships at dawn."


def local_backend(**kwargs: Any) -> SimulatedBackend:
    model = SimModel(LOCAL_MODEL, context_length=CONTEXT_LENGTH, tools=True)
    return SimulatedBackend(Flavor.VLLM, [model], name="vllm", **kwargs)


async def run_claude(
    claude_bin: str, nexus: Nexus, tmp_path: Path, prompt: str, *options: str
) -> subprocess.CompletedProcess[bytes]:
    """``claude -p PROMPT`` against ``nexus``, in ``tmp_path/work``, with a fresh HOME."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": nexus.url,
        "ANTHROPIC_API_KEY": "any",  # Nexus takes none unless configured to
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    command = [claude_bin, "-p", prompt, "--model", CLAUDE_MODEL, *options]
    with trio.fail_after(CLAUDE_SECONDS):
        return await trio.run_process(
            command,
            cwd=tmp_path / "work",
            env=environ,
            stdin=b"",
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


def explain(result: subprocess.CompletedProcess[bytes], nexus: Nexus) -> str:
    return (
        f"claude exited {result.returncode}\nstdout: {result.stdout.decode(errors='replace')}\n"
        f"stderr: {result.stderr.decode(errors='replace')}\nnexus log:\n{nexus.log.text}"
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    return work


async def test_claude_code_prints_the_local_models_answer(
    nursery: trio.Nursery, claude_bin: str, tmp_path: Path, workdir: Path
) -> None:
    backend = local_backend()
    nexus = await start_nexus_process(nursery, tmp_path, [backend], ALIASES)
    # No tools offered, so the model answers in text at once.
    result = await run_claude(claude_bin, nexus, tmp_path, "Say hello.", "--tools", "")
    assert result.returncode == 0, explain(result, nexus)
    body = backend.stats.last_chat_body
    assert body is not None
    assert dict(backend.stats.chat_by_model) == {LOCAL_MODEL: 1}, explain(result, nexus)
    assert result.stdout.decode().strip() == expected_answer(LOCAL_MODEL, body["messages"])


@pytest.mark.parametrize("tools", [["--tools", "Read"], []], ids=["tools-Read", "default-tools"])
async def test_claude_code_reads_a_file_through_a_tool_call(
    nursery: trio.Nursery, claude_bin: str, tmp_path: Path, workdir: Path, tools: list[str]
) -> None:
    note = workdir / "notes.txt"
    note.write_text(NOTE + "\n")
    # The model asks to Read this very file (a simulated model cannot read the prompt).
    backend = local_backend(tool_arguments={"Read": {"file_path": str(note)}})
    nexus = await start_nexus_process(nursery, tmp_path, [backend], ALIASES)
    result = await run_claude(claude_bin, nexus, tmp_path, "What does notes.txt say?", *tools)
    assert result.returncode == 0, explain(result, nexus)
    # First the tool call, then the answer to its result: two requests.
    assert dict(backend.stats.chat_by_model) == {LOCAL_MODEL: 2}, explain(result, nexus)
    body = backend.stats.last_chat_body
    assert body is not None
    messages = body["messages"]
    calls = [i for i, m in enumerate(messages) if m["role"] == "assistant" and m.get("tool_calls")]
    assert len(calls) == 1, messages
    (index,) = calls
    (call,) = messages[index]["tool_calls"]
    # The id the backend gave its call in the first answer comes back to it unchanged.
    assert call["id"] == tool_call_id(LOCAL_MODEL, messages[:index])
    assert call["function"]["name"] == "Read"
    assert json.loads(call["function"]["arguments"]) == {"file_path": str(note)}
    results = [m for m in messages[index + 1 :] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in results] == [call["id"]]
    (tool_result,) = results
    content = tool_result["content"]
    text = content if isinstance(content, str) else json.dumps(content)
    assert NOTE in text  # Claude Code really read the file
    assert result.stdout.decode().strip() == expected_answer(LOCAL_MODEL, messages)
