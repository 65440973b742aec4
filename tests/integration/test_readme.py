"""Every Python block of README.md runs, as written, against the test cluster.

Each block runs in its own interpreter with the cluster's ``TASKPLANE_*``
settings in its environment (that is how the README says to configure
taskplane), next to the example HTTP agent (``examples/agents/http_agent.py``).
The one rewrite is the agent's address: the README says
``http://127.0.0.1:8080``, the test starts the agent on a free port.

A block that cannot run here says why in an HTML comment on the line before
its fence, ``<!-- readme-test: skip (reason) -->``; such blocks are few and
each must give its reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from taskplane.devtools.redis_server import free_port
from taskplane.keys import plan_key
from tests.integration.conftest import ON_REDIS_CLUSTER, ROOT, Cluster

pytestmark = pytest.mark.integration

README = ROOT / "README.md"
README_AGENT = "http://127.0.0.1:8080"
SKIP_MARK = "<!-- readme-test: skip ("
#: Plan ids the README's blocks name: removed before and after, so each run is a fresh run.
README_PLAN_IDS = (
    "plan-123",
    "plan-124",
    "plan-budget",
    "from-another-service",
    "async-tour",
    "traced-from-a-service",
)
BLOCK_TIMEOUT_S = 120


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence
    code: str
    skip: str | None  # the reason, for a block that is not run


def python_blocks(text: str) -> list[Block]:
    """The README's ```python blocks, with the skip reason of those marked not to run."""
    blocks, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            before = lines[i - 1].strip() if i else ""
            skip = (
                before[len(SKIP_MARK) :].rstrip("-> ").rstrip(")")
                if before.startswith(SKIP_MARK)
                else None
            )
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            blocks.append(Block(i + 1, "\n".join(lines[i + 1 : end]) + "\n", skip))
            i = end
        i += 1
    return blocks


BLOCKS = python_blocks(README.read_text())


def test_the_readme_has_blocks_to_run_and_skips_say_why() -> None:
    runnable = [b for b in BLOCKS if b.skip is None]
    assert len(runnable) >= 4
    assert all(b.skip for b in BLOCKS if b.skip is not None)
    assert len(BLOCKS) - len(runnable) <= 2  # the control-plane adapter, agents on your hosts


def test_block_parser_reads_fences_and_skip_marks() -> None:
    text = "x\n```python\na = 1\n```\n<!-- readme-test: skip (needs X) -->\n```python\nb\n```\n"
    assert python_blocks(text) == [Block(2, "a = 1\n", None), Block(6, "b\n", "needs X")]


@pytest.fixture(scope="module")
def example_agent() -> Iterator[str]:
    """The example HTTP agent, on a free port; its endpoint."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.agents.http_agent", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{endpoint}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the example HTTP agent did not come up")
            time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def fresh_plans(cluster: Cluster) -> Iterator[None]:
    """Forget the runs the README's plan ids name (before and after), and its agent."""
    client = cluster.engine.redis

    def forget() -> None:
        for plan_id in README_PLAN_IDS:
            for key in client.scan_iter(plan_key(cluster.settings.key_prefix, plan_id, "*")):
                client.delete(key)

    forget()
    try:
        yield
    finally:
        forget()
        cluster.engine.unregister_agent("reviewer")


#: README code that needs one Redis: skipped on a Redis Cluster run (README: Production topology).
SINGLE_REDIS_CODE = ("AsyncExecutionEngine", "backend=redis_url")


@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if b.skip is None], ids=lambda b: f"README.md:{b.line}"
)
def test_readme_block_runs(
    block: Block, cluster: Cluster, example_agent: str, fresh_plans: None, tmp_path: Path
) -> None:
    if ON_REDIS_CLUSTER and any(name in block.code for name in SINGLE_REDIS_CODE):
        pytest.skip("asyncio engine / Celery's Redis result backend: one Redis only")
    script = tmp_path / f"readme_{block.line}.py"
    script.write_text(block.code.replace(README_AGENT, example_agent))
    env = {**os.environ, **cluster.env, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning:taskplane", str(script)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"README.md:{block.line}\n{done.stdout}\n{done.stderr}"
