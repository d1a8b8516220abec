"""Peak resident memory of a command, measured so that the measuring process's own peak cannot leak in.

    python -m aaclip.benchmarks.peak_rss -- aaclip-export CKPT --out model.onnx

Why not simply ``os.wait4`` on the child: on Linux, ``exec`` folds the high-water mark of the address space
it replaces into the new program's ``ru_maxrss`` (``setmax_mm_hiwater_rss`` in fs/exec.c), and under
``vfork``/``posix_spawn`` (what ``subprocess`` uses) that address space is the parent's. ``wait4`` therefore
reports max(the parent's peak so far, the child's own peak): the family-parity benchmark, whose process
had run a ViT-L in PyTorch, reported 10.2-11.2 GB for exports that peak at 4.5 GB on their own. Here the
command is started by a small launcher process (stdlib only, a few MB resident), whose ``wait4`` on the
command sees the command's own peak; the launcher writes it to a file for the caller.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

# The launcher: run argv[2:], forward SIGTERM as SIGKILL to it, write {exit, maxrss_kb} to argv[1].
LAUNCHER = """\
import json, os, signal, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
signal.signal(signal.SIGTERM, lambda *_: child.kill())
while True:
    try:
        _, status, usage = os.wait4(child.pid, 0)
        break
    except InterruptedError:
        continue
with open(sys.argv[1], "w") as f:
    json.dump({"exit": os.waitstatus_to_exitcode(status), "maxrss_kb": usage.ru_maxrss}, f)
"""


@dataclass(frozen=True)
class Measured:
    """A finished command: its exit code (negative: killed by that signal), its own peak resident memory
    in MB (None when the launcher itself was lost), wall seconds, and its output when captured."""

    exit_code: int
    peak_rss_mb: Optional[float]
    seconds: float
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False


def run_measured(cmd: Sequence[str], timeout_s: Optional[float] = None, capture: bool = False) -> Measured:
    """Run ``cmd`` (inheriting stdio unless ``capture``); stop it after ``timeout_s`` (its peak is still
    reported, the exit code is then -9)."""
    pipe = subprocess.PIPE if capture else None
    with tempfile.TemporaryDirectory(prefix="aaclip-peak-") as tmp:
        report = Path(tmp) / "peak.json"
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(report), *map(str, cmd)],
                                stdout=pipe, stderr=pipe, text=True)
        timed_out = False
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.send_signal(signal.SIGTERM)  # the launcher kills the command and still reports its peak
            out, err = proc.communicate()
        seconds = time.monotonic() - start
        if report.is_file():
            result = json.loads(report.read_text())
            code, peak = int(result["exit"]), result["maxrss_kb"] / 1024.0
        else:
            code, peak = proc.returncode or -signal.SIGKILL, None
    return Measured(code, peak, round(seconds, 1), out or "", err or "", timed_out)


def main(argv: Optional[list[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[0] + "\n\nusage: python -m aaclip.benchmarks.peak_rss -- COMMAND [ARGS...]")
        return 0 if args else 2
    result = run_measured(args)
    peak = "unknown" if result.peak_rss_mb is None else f"{result.peak_rss_mb:.0f} MB"
    print(f"peak RSS {peak}, {result.seconds:.1f} s, exit {result.exit_code}", file=sys.stderr)
    return result.exit_code if result.exit_code >= 0 else 128 - result.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
