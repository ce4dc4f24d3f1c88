#!/usr/bin/env python3
"""Turns a device-sim dump into the rollup benchmark's input (stdin → stdout): adds a
fourth metric (`pressure`) to every message, so that 1 M messages carry 4 M readings,
repeats 0.5 % of the messages (at-least-once redeliveries) and moves 1 % of them to the
end of the file (late data). Seeded: the same input gives the same output.

    python3 analytics/bench/mix.py < raw.jsonl > bench.jsonl
"""

import json
import random
import sys

rng = random.Random(13)
late = []
for line in sys.stdin:
    msg = json.loads(line)
    msg["metrics"]["pressure"] = round(1000 + rng.random() * 30, 2)
    out = json.dumps(msg, separators=(",", ":"))
    r = rng.random()
    if r < 0.01:
        late.append(out)
        continue
    print(out)
    if r < 0.015:
        print(out)
for out in late:
    print(out)
