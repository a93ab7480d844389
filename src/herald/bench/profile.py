"""`herald bench --profile DIR`: a py-spy profile of every Herald process over the
measured window, one file per process (`DIR/<process>.<ext>`).

py-spy attaches to each running process (`py-spy record --pid`), samples its Python
stacks 100 times a second with `--nonblocking` (it does not pause the process to read
them, so the profiled process runs at full speed; a stack may now and then be torn) and
writes the file when it gets SIGINT at the window's end. The window starts only once every
recorder says it samples: attaching takes a while on a loaded machine, and a recorder
interrupted before it attached writes nothing. Idle threads are left out (py-spy's
default), so the profile shows where the CPU goes. py-spy's own CPU is not counted as
Herald's, but it shares the machine: figures of a profiled run are not comparable with
those of a plain one.

Formats: `flamegraph` (an SVG to open in a browser), `speedscope` (JSON for speedscope),
`raw` (collapsed stacks, one line per stack, for grep and flamegraph.pl).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from herald.bench.errors import BenchError

FORMATS = {"flamegraph": "svg", "speedscope": "speedscope.json", "raw": "txt"}
RATE_HZ = 100
ATTACH_TIMEOUT_S = 60.0
SAMPLING = b"py-spy> Sampling process"  # what py-spy prints once it is attached


def py_spy() -> str:
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise BenchError("--profile needs py-spy (the dev extra: ./scripts/bootstrap)")
    return found


def _says_sampling(log: Path) -> bool:
    with contextlib.suppress(OSError):
        return SAMPLING in log.read_bytes()  # a few hundred bytes at most
    return False


@dataclass
class Profiler:
    directory: Path
    format: str = "flamegraph"
    _running: dict[str, tuple[subprocess.Popen[bytes], Path, Path]] = field(default_factory=dict)

    async def start(self, pids: dict[str, int]) -> None:
        """A recorder per process; returns once each samples (or gave up, which stop notes)."""
        self._spawn(pids)
        await asyncio.gather(
            *(self._attached(child, log) for child, _out, log in self._running.values())
        )

    def _spawn(self, pids: dict[str, int]) -> None:
        if self.format not in FORMATS:
            raise BenchError(f"unknown profile format {self.format!r}")
        binary = py_spy()
        self.directory.mkdir(parents=True, exist_ok=True)
        for name, pid in pids.items():
            out = self.directory / f"{name}.{FORMATS[self.format]}"
            log = self.directory / f"{name}.py-spy.log"
            with log.open("wb") as handle:
                child = subprocess.Popen(
                    [
                        binary,
                        "record",
                        *("--pid", str(pid), "--rate", str(RATE_HZ)),
                        *("--format", self.format, "--output", str(out)),
                        "--nonblocking",
                    ],
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._running[name] = (child, out, log)

    @staticmethod
    async def _attached(child: subprocess.Popen[bytes], log: Path) -> None:
        deadline = asyncio.get_running_loop().time() + ATTACH_TIMEOUT_S
        while child.poll() is None and asyncio.get_running_loop().time() < deadline:
            if _says_sampling(log):
                return
            await asyncio.sleep(0.05)

    async def stop(self) -> tuple[dict[str, str], list[str]]:
        """SIGINT to every recorder, which writes its file; returns {process: path} and
        notes for those that wrote none."""
        for child, _out, _log in self._running.values():
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        files: dict[str, str] = {}
        notes: list[str] = []
        for name, (child, out, log) in self._running.items():
            try:
                await asyncio.to_thread(child.wait, 60)
            except subprocess.TimeoutExpired:
                child.kill()
                await asyncio.to_thread(child.wait, 10)
            if out.exists() and out.stat().st_size > 0:
                files[name] = str(out)
            else:
                tail = ""
                with contextlib.suppress(OSError):
                    tail = log.read_text(errors="replace").strip()[-300:]
                notes.append(f"profile of {name}: py-spy wrote nothing ({tail or 'no output'})")
        self._running.clear()
        return files, notes
