"""Claude Code itself (``claude -p``) through a real ``nexus serve`` on ``/v1/messages``.

Nexus runs as a process in front of a simulated vLLM serving one local model, with every
``claude-*`` model id aliased to it, as a user would configure it. Claude Code gets a fresh
``HOME``, a scratch working directory and nothing but loopback (see conftest.py). The
simulated backend's answers are deterministic, so what Claude Code prints is checked word
for word against the conversation the backend received.

Claude Code shapes its request by model: for ``claude-sonnet-4-5`` the conversation ends
with the user's message; for its default model (``claude-opus-5-5`` in this version) it
ends with a system message of environment notes after the user's, and asks for adaptive
thinking and an effort. Both are run.
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
# Any claude-* id: the alias maps it; [] lets Claude Code pick its default model.
SONNET = ["--model", "claude-sonnet-4-5"]
DEFAULT: list[str] = []
ALIASES = {"claude-*": LOCAL_MODEL}
# Claude Code asks for max_tokens 32,000 (128,000 for its default model) on top of a prompt
# of some 5,000 words; vLLM refuses a request whose prompt and max_tokens exceed the context.
CONTEXT_LENGTH = 262_144
CLAUDE_SECONDS = 120  # a bound against a hang; a run takes a second or two
NOTE = "The lighthouse keeper counts 7 ships at dawn."


def local_backend(context_length: int = CONTEXT_LENGTH, **kwargs: Any) -> SimulatedBackend:
    model = SimModel(LOCAL_MODEL, context_length=context_length, tools=True)
    # Claude Code's environment notes after the user's message leave the turn the user's.
    return SimulatedBackend(
        Flavor.VLLM, [model], name="vllm", system_keeps_user_turn=True, **kwargs
    )


async def run_claude(
    claude_bin: str,
    nexus: Nexus,
    tmp_path: Path,
    prompt: str,
    *options: str,
    environ: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """``claude -p PROMPT`` against ``nexus``, in ``tmp_path/work``, with a fresh HOME."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    environ = {
        **(environ or {}),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": nexus.url,
        "ANTHROPIC_API_KEY": "any",  # Nexus takes none unless configured to
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    command = [claude_bin, "-p", prompt, *options]
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


@pytest.mark.parametrize("model", [SONNET, DEFAULT], ids=["sonnet-4-5", "default-model"])
async def test_claude_code_prints_the_local_models_answer(
    nursery: trio.Nursery, claude_bin: str, tmp_path: Path, workdir: Path, model: list[str]
) -> None:
    backend = local_backend()
    nexus = await start_nexus_process(nursery, tmp_path, [backend], ALIASES)
    # No tools offered, so the model answers in text at once.
    result = await run_claude(claude_bin, nexus, tmp_path, "Say hello.", *model, "--tools", "")
    assert result.returncode == 0, explain(result, nexus)
    body = backend.stats.last_chat_body
    assert body is not None
    assert dict(backend.stats.chat_by_model) == {LOCAL_MODEL: 1}, explain(result, nexus)
    assert result.stdout.decode().strip() == expected_answer(LOCAL_MODEL, body["messages"])


@pytest.mark.parametrize(
    ("environ", "sent"),
    [({}, None), ({"CLAUDE_CODE_MAX_OUTPUT_TOKENS": "8192"}, 8192)],
    ids=["uncapped", "capped"],
)
async def test_a_32k_model_takes_claude_codes_requests(
    nursery: trio.Nursery,
    claude_bin: str,
    tmp_path: Path,
    workdir: Path,
    environ: dict[str, str],
    sent: int | None,
) -> None:
    # Claude Code asks for 32,000 output tokens, which a 32k context cannot hold beside the
    # prompt (a vLLM would refuse the request): Nexus sends no limit then, and the backend
    # stops where its context ends. A limit that fits is sent as it is.
    backend = local_backend(context_length=32_768)
    nexus = await start_nexus_process(nursery, tmp_path, [backend], ALIASES)
    options = [*SONNET, "--tools", ""]
    result = await run_claude(claude_bin, nexus, tmp_path, "Say hello.", *options, environ=environ)
    assert result.returncode == 0, explain(result, nexus)
    body = backend.stats.last_chat_body
    assert body is not None
    assert body.get("max_tokens") == sent
    assert result.stdout.decode().strip() == expected_answer(LOCAL_MODEL, body["messages"])


@pytest.mark.parametrize(
    ("model", "tools"),
    [(SONNET, ["--tools", "Read"]), (SONNET, []), (DEFAULT, ["--tools", "Read"])],
    ids=["sonnet-4-5-Read", "sonnet-4-5-default-tools", "default-model-Read"],
)
async def test_claude_code_reads_a_file_through_a_tool_call(
    nursery: trio.Nursery,
    claude_bin: str,
    tmp_path: Path,
    workdir: Path,
    model: list[str],
    tools: list[str],
) -> None:
    note = workdir / "notes.txt"
    note.write_text(NOTE + "\n")
    # The model asks to Read this very file (a simulated model cannot read the prompt).
    backend = local_backend(tool_arguments={"Read": {"file_path": str(note)}})
    nexus = await start_nexus_process(nursery, tmp_path, [backend], ALIASES)
    prompt = "What does notes.txt say?"
    result = await run_claude(claude_bin, nexus, tmp_path, prompt, *model, *tools)
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
