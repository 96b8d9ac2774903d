"""Shared by the benchmark scripts: what machine a benchmark ran on, and rewriting one section of the README."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

GIB = 1024**3


def cpu_and_ram() -> dict[str, object]:
    """CPU count and model name, and RAM in GiB."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "ram_gib": round(ram / GIB, 1), "cpu": cpu}


def replace_readme_section(readme: Path, title: str, end_marker: str, section: str) -> None:
    """Rewrite one benchmark's section of ``benchmarks/README.md`` (from its title through its end marker), leaving
    every other section as it is; a section not there yet is appended."""
    text = readme.read_text() if readme.exists() else "# Benchmarks\n"
    start = text.find(title)
    if start < 0:
        head, tail = text.rstrip() + "\n\n", ""
    else:
        head = text[:start]
        end = text.find(end_marker, start)
        if end >= 0:
            tail = text[end + len(end_marker) :].lstrip("\n")
        else:  # no end marker (edited by hand): the section ends at the next level-2 title
            after = re.search(r"^## ", text[start + len(title) :], flags=re.MULTILINE)
            tail = "" if after is None else text[start + len(title) + after.start() :]
        tail = "\n" + tail if tail else ""
    readme.write_text(head + section + tail)
