"""Open an sslnlp report in headless Chromium, check that it rendered, and save a full-page screenshot.

    python docs/screenshot.py runs/cram-cpu/report/index.html docs/report-cram-cpu.png

Needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver) and selenium
(pip install selenium). "Rendered" means: the browser logged no error, every chart image decoded, and the summary
table has a row per run; a problem is printed and the exit status is 1.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def open_browser(width: int = 1400):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},1000", "--hide-scrollbars"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)


def check_page(driver, page: Path) -> dict:
    """Load the page; return what rendered: errors logged, images and whether each decoded, table rows."""
    driver.get(page.resolve().as_uri())
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0, i.naturalWidth])")
    rows = driver.execute_script("return document.querySelectorAll('table tbody tr').length")
    errors = [entry["message"] for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    return {"images": images, "rows": rows, "errors": errors,
            "height": driver.execute_script("return document.documentElement.scrollHeight")}


def screenshot(page: Path, output: Path, width: int = 1400) -> dict:
    """Check the page (check_page) and save the whole of it, not only the window, as a PNG."""
    import base64

    driver = open_browser(width)
    try:
        rendered = check_page(driver, page)
        size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(base64.b64decode(shot["data"]))
    finally:
        driver.quit()
    return rendered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--width", type=int, default=1400)
    args = parser.parse_args()
    rendered = screenshot(args.page, args.output, args.width)
    broken = [alt for alt, decoded, _ in rendered["images"] if not decoded]
    print(f"{len(rendered['images'])} charts ({len(broken)} not decoded), {rendered['rows']} table rows, "
          f"{len(rendered['errors'])} browser errors; screenshot {args.output}")
    for problem in rendered["errors"] + [f"chart not decoded: {alt}" for alt in broken]:
        print(f"  {problem}")
    sys.exit(1 if broken or rendered["errors"] or not rendered["images"] else 0)


if __name__ == "__main__":
    main()
