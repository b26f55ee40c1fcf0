"""Counts and failures from a pytest JUnit XML file, for benchmarks/gpu_check.sh's summary.

Prints one line of counts (passed, failed, errors, skipped, and the skip reasons
with how often each came up), then up to ``--failures`` failed or erroring test
ids with the first line of their message. Exit status 0 whatever the tests did:
the summary is a report, the test run's own status is the verdict.

    python benchmarks/junit_summary.py OUT/tests.xml
"""

from __future__ import annotations

import argparse
import collections
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def summarize(path: Path, max_failures: int = 40) -> list[str]:
    if not path.is_file():
        return [f"no JUnit file at {path} (the test run did not finish writing it)"]
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        return [f"unreadable JUnit file {path}: {exc}"]
    counts = collections.Counter()
    skips = collections.Counter()
    failures = []
    for case in root.iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "errors"
                message = (child.get("message") or child.text or "").strip().splitlines()
                failures.append(f"  {child.tag.upper():7} {test_id}: {message[0][:200] if message else ''}")
            elif child.tag == "skipped":
                outcome = "skipped"
                skips[(child.get("message") or "").strip()[:120]] += 1
        counts[outcome] += 1
    total = sum(counts.values())
    lines = [f"{total} tests: {counts['passed']} passed, {counts['failed']} failed, "
             f"{counts['errors']} errors, {counts['skipped']} skipped"]
    lines += [f"  skipped {n}x: {reason}" for reason, n in skips.most_common(10)]
    lines += failures[:max_failures]
    if len(failures) > max_failures:
        lines.append(f"  ... and {len(failures) - max_failures} more")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("junit", type=Path)
    p.add_argument("--failures", type=int, default=40, help="list at most this many (default 40)")
    args = p.parse_args(argv)
    print("\n".join(summarize(args.junit, args.failures)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
