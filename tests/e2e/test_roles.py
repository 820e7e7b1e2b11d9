"""Roles load only what they run: the api never imports TensorFlow; the CLI rejects bad input at start."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin"})


def test_the_api_role_starts_and_serves_without_importing_tensorflow(tmp_path: Path) -> None:
    result = run_python(
        """
        import asyncio, sys
        import httpx
        from skipper.app.runtime import Runtime
        from skipper.core.settings import load_settings

        async def main():
            runtime = Runtime(load_settings(environ={}, overrides={"data_dir": sys.argv[1]}), frozenset({"api"}))
            await runtime.start()
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=runtime.app()), base_url="http://127.0.0.1") as c:
                r = await c.post("/api/v1/skipper/workflows/diabetes/train", json={})
                assert r.status_code == 202, r.text
            await runtime.stop()

        asyncio.run(main())
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")))
        """,
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_the_cli_refuses_an_unknown_role_or_setting_with_a_message_naming_it(tmp_path: Path) -> None:
    bad_role = subprocess.run([sys.executable, "-m", "skipper", "--role=painter"], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
    assert bad_role.returncode == 2 and "unknown role 'painter'" in bad_role.stderr
    bad_setting = subprocess.run([sys.executable, "-m", "skipper"], cwd=ROOT, capture_output=True, text=True,
                                 timeout=60, env={"PATH": "/usr/bin:/bin", "SKIPPER_TRANSPORTT": "memory"})
    assert bad_setting.returncode == 2 and "transportt" in bad_setting.stderr
