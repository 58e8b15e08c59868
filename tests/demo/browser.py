"""Opens a report in Debian's chromium, headless: the DOM it parsed and a screenshot of what it drew.

hack/install-browser.sh installs chromium (make test-unit / test-cluster run it).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# The plots' bar colours (matplotlib's tab: palette), as report.py draws them.
GREEN, BLUE, GRAY = (44, 160, 44), (31, 119, 180), (127, 127, 127)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]


@dataclass
class Rendered:
    dom: str
    screenshot: Image.Image

    def pixels_near(self, colour: tuple[int, int, int], tolerance: int = 10) -> int:
        rgb = np.asarray(self.screenshot.convert("RGB"), dtype=np.int16)
        return int((np.abs(rgb - np.array(colour, dtype=np.int16)).max(axis=2) <= tolerance).sum())

    def distinct_colours(self) -> int:
        rgb = np.asarray(self.screenshot.convert("RGB"), dtype=np.int32).reshape(-1, 3)
        return len(np.unique(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2]))


def chromium() -> str:
    found = shutil.which("chromium")
    assert found, "chromium is not installed: run bash hack/install-browser.sh"
    return found


def render(html: Path, workdir: Path, height: int = 7000) -> Rendered:
    url = html.resolve().as_uri()
    dom = subprocess.run(
        [chromium(), *FLAGS, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    shot = workdir / f"{html.stem}.png"
    subprocess.run(
        [chromium(), *FLAGS, f"--window-size=1280,{height}", f"--screenshot={shot}", url],
        capture_output=True,
        timeout=120,
        check=True,
    )
    return Rendered(dom, Image.open(shot))
