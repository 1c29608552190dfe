#!/usr/bin/env python3
"""Record tests/data/wg-small.pcap (full) and wg-small-s96.pcap (-s 96) on the lab gateway's wg0.

Both files come from two tcpdumps running at the same time on the same interface, so they hold the
same packets; the -s 96 one keeps only headers. Needs root, wireguard-go, wg, tcpdump and iperf3
(scripts/install-system-deps.sh). Usage: sudo .venv/bin/python scripts/record-test-capture.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers.netlab import WireguardLab  # noqa: E402

MAX_FULL_BYTES = 1_500_000


def main() -> int:
    """Record both captures into --out-dir; exit 1 if tcpdump lost packets or a file is too big."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "tests" / "data")
    parser.add_argument("--scale", type=float, default=0.05, help="traffic scale (1.0 = ~13 MB)")
    args = parser.parse_args()
    ok, why = WireguardLab.available()
    if not ok:
        print(f"error: cannot build the WireGuard lab: {why}", file=sys.stderr)
        return 2
    names = {"wg-small.pcap": 0, "wg-small-s96.pcap": 96}
    with tempfile.TemporaryDirectory(prefix="record-capture-") as tmp:
        files = {Path(tmp) / name: snaplen for name, snaplen in names.items()}
        with WireguardLab() as lab, lab.capture(files) as stats:
            ran = lab.run_standard_traffic(scale=args.scale)
        problems = stats.problems()
        full_bytes = (Path(tmp) / "wg-small.pcap").stat().st_size
        if full_bytes > MAX_FULL_BYTES:
            problems.append(f"full capture is {full_bytes} bytes, over {MAX_FULL_BYTES}")
        if problems:
            print("error: capture not written:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 1
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for path in files:
            shutil.move(path, args.out_dir / path.name)
    for path, snaplen in files.items():
        size = (args.out_dir / path.name).stat().st_size
        count = stats.captured[path]
        print(f"{args.out_dir / path.name}: {size} bytes, {count} packets, snaplen {snaplen}")
    print("traffic:", json.dumps(ran, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
