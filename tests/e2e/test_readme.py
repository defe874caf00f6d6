"""The README's examples, run in order against a real `atp up`, print what the README says.

Every ```sh block is run in one bash session (so its variables carry on), every ```python
block with the project's Python, in the order they appear. A command followed by lines
``# => answer`` (more lines: ``#    more``) must print that answer, where ``...`` stands
for anything; the default ports in an answer are read as the ones this `atp up` moved to.
A block preceded by ``<!-- not run by tests/e2e/test_readme.py: why -->`` is left out
(set-up, long-running processes, load tests).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from atp_service.embedded import free_ports
from tests.e2e.conftest import atp_argv
from tests.e2e.test_atp_up import Output

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
REPO = README.parent
SKIP_MARK = "<!-- not run by tests/e2e/test_readme.py:"
ANSWER, MORE = "# => ", "#    "
#: The ports the README's answers show (atp up's defaults), by the flag that moves them.
DEFAULT_PORTS = {"--api-port": 8000, "--redis-port": 16379, "--kafka-port": 19092,
                 "--worker-metrics-port": 9102}  # fmt: skip
START_DEADLINE = 60.0
STEP_DEADLINE = 60.0
#: A read is asked again for this long: the fold of what a step before produced is async.
SETTLE_SECONDS = 15.0


@dataclass(frozen=True)
class Block:
    lang: str
    lines: list[str]
    line_no: int  # of the opening fence
    skipped_because: str | None


@dataclass(frozen=True)
class Step:
    code: str
    answer: str | None
    line_no: int

    @property
    def is_a_read(self) -> bool:
        """Safe to ask again: a GET or `atp status`, nothing that writes or captures."""
        writes = (" -d ", "-X ", "python", "tee ", "$(", "source ")
        assigns = re.search(r"^\w+=", self.code, flags=re.MULTILINE) is not None
        return not assigns and not any(marker in self.code for marker in writes)


def readme_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = re.fullmatch(r"```(\w*)\s*", lines[i])
        if fence is None:
            i += 1
            continue
        before = next((x for x in reversed(lines[:i]) if x.strip()), "")
        reason = before.removeprefix(SKIP_MARK).removesuffix("-->").strip() or None
        end = lines.index("```", i + 1)
        skipped = reason if before.startswith(SKIP_MARK) else None
        blocks.append(Block(fence.group(1), lines[i + 1 : end], i + 1, skipped))
        i = end + 1
    return blocks


def readme_steps(blocks: list[Block]) -> list[Step]:
    """One step per command (a line and its ``\\`` continuations), with the answer after it."""
    steps: list[Step] = []
    for block in blocks:
        if block.skipped_because is not None:
            continue
        if block.lang == "python":
            code = "\n".join(block.lines)
            steps.append(Step(f".venv/bin/python - <<'README_PY'\n{code}\nREADME_PY", None,
                              block.line_no))  # fmt: skip
            continue
        assert block.lang == "sh", f"README line {block.line_no}: a {block.lang!r} block is run?"
        command: list[str] = []
        for n, line in enumerate(block.lines, block.line_no + 1):
            if command and command[-1].endswith("\\"):
                command.append(line)
            elif line.startswith(ANSWER):
                assert steps and steps[-1].answer is None, f"README line {n}: whose answer?"
                steps[-1] = replace(steps[-1], answer=line.removeprefix(ANSWER))
            elif line.startswith(MORE) and steps and steps[-1].answer is not None:
                steps[-1] = replace(steps[-1], answer=f"{steps[-1].answer}\n{line[len(MORE) :]}")
            elif line.strip() and not line.lstrip().startswith("#"):
                command = [line]
            else:
                continue
            if command and not command[-1].endswith("\\"):
                steps.append(Step("\n".join(command), None, n - len(command) + 1))
                command = []
    return steps


def answered(expected: str, output: str) -> bool:
    pattern = ".*?".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, output.strip(), flags=re.DOTALL) is not None


class Shell:
    """One bash session fed step after step; each step's output lands in a file of its own."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.outputs = cwd / ".readme-steps"
        self.outputs.mkdir()
        self.proc = subprocess.Popen(
            ["bash", "--norc", "--noprofile"], stdin=subprocess.PIPE, cwd=cwd, env=env, text=True
        )
        self.count = 0

    def run(self, code: str) -> tuple[int, str]:
        self.count += 1
        out, rc = self.outputs / str(self.count), self.outputs / f"{self.count}.rc"
        assert self.proc.stdin is not None
        self.proc.stdin.write(
            f"{{\n{code}\n}} > {out} 2>&1; echo $? > {rc}.tmp; mv {rc}.tmp {rc}\n"
        )
        self.proc.stdin.flush()
        deadline = time.monotonic() + STEP_DEADLINE
        while not rc.exists():
            assert self.proc.poll() is None, "the README's shell exited"
            assert time.monotonic() < deadline, f"no end within {STEP_DEADLINE:g}s:\n{code}"
            time.sleep(0.05)
        return int(rc.read_text()), out.read_text()

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(10)


@dataclass
class Stack:
    cwd: Path
    ports: dict[str, int]  # by flag

    def as_moved(self, text: str) -> str:
        for flag, default in DEFAULT_PORTS.items():
            text = text.replace(f"127.0.0.1:{default}", f"127.0.0.1:{self.ports[flag]}")
        return text


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`atp up` with the demo's channel policies and sites (no demo traffic) in a directory
    of its own, its `.atp/` and a `.venv` link beside, as in a clone after `make run`."""
    cwd = tmp_path_factory.mktemp("readme")
    (cwd / ".venv").symlink_to(Path(sys.prefix))
    ports = dict(zip(DEFAULT_PORTS, free_ports(len(DEFAULT_PORTS)), strict=True))
    argv = atp_argv(
        "up", "--channels-file", str(REPO / "examples" / "channels.json"),
        "--sites-file", str(REPO / "examples" / "sites.json"),
        "--workdir", str(cwd / ".atp"), *(str(x) for item in ports.items() for x in item),
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATP_")}
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    output = Output(proc)
    try:
        output.wait_for("Ctrl-C stops everything", proc, START_DEADLINE)
        yield Stack(cwd, ports)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_every_block_the_readme_examples_leave_out_says_why() -> None:
    blocks = readme_blocks(README.read_text())

    run = [b for b in blocks if b.skipped_because is None]
    assert all(b.lang in ("sh", "python") for b in run), [(b.line_no, b.lang) for b in run]
    assert all(b.skipped_because for b in blocks if b not in run)
    assert sum(step.answer is not None for step in readme_steps(blocks)) >= 12


def test_the_readmes_examples_print_what_it_says_in_order(stack: Stack) -> None:
    steps = readme_steps(readme_blocks(README.read_text()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATP_")}
    shell = Shell(stack.cwd, env)
    try:
        for step in steps:
            expected = None if step.answer is None else stack.as_moved(step.answer)
            deadline = time.monotonic() + (SETTLE_SECONDS if step.is_a_read else 0)
            while True:
                code, output = shell.run(step.code)
                good = code == 0 and (expected is None or answered(expected, output))
                if good or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert good, (
                f"README line {step.line_no}:\n{step.code}\nexited {code}, printed:\n{output}\n"
                f"the README says:\n{expected}"
            )
    finally:
        shell.close()
