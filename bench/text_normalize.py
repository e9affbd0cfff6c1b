"""How long speech-ready text takes: ``speakable`` and ``chunks`` on 20,000 characters.

Run: ``python -m bench.text_normalize [--runs N]``. Prints the best, the median and the
worst of N runs (milliseconds) per input; on a shared machine the best is the cost, the
rest is other processes. No thresholds: the goal (well under 100 ms for 20,000
characters) is checked by reading the numbers, never by a test, so that a busy machine
cannot fail the suite.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from ttsd.text import chunks, speakable, warm_up

SIZE = 20_000

AGENT_REPLY = """## Summary

I looked at the **failing tests** and found *two* causes.
See [the CI run](https://github.com/acme/ttsd/actions/runs/123) for details.

- The parser in `ttsd/protocol.py` rejects form feeds.
- `split_text()` inserts spaces into long words ✅

| Test | Status |
|------|--------|
| test_limits | passed |
| test_faults | failed |

```python
def speakable(text: str) -> Speech:
    return Speech(())
```

Next I will edit ~/.config/ttsd/config.toml and re-run. 🚀

"""

PROSE = (
    "The daemon reads what agents write. It keeps a queue per client, and it never "
    "blocks the event loop; long texts are split into sentences first. Über Straßen "
    "und Plätze, sagte sie. "
)

DENSE = "# Heading\n\n- item *one* with `code`\n- item [two](http://x.org)\n\n> quote\n\n"

INPUTS: dict[str, tuple[str, str]] = {
    "agent reply (markdown, auto)": (AGENT_REPLY, "auto"),
    "plain prose (auto)": (PROSE, "auto"),
    "plain prose (text)": (PROSE, "text"),
    "dense markdown (auto)": (DENSE, "auto"),
    "ANSI-coloured log (auto)": ("\x1b[32mok\x1b[0m test_one passed in 0.1s\n", "auto"),
    "emoji and symbols (auto)": ("Done ✅ 🚀 deployed 👍🏽 to 🇫🇷 — next → ", "auto"),
    "one 20,000-character word (auto)": ("x", "auto"),
}


def _time(function: Callable[[], object], runs: int) -> tuple[float, float, float]:
    """(best, median, worst) milliseconds of ``runs`` calls."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000)
    return min(times), statistics.median(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    warm_up()
    print(f"{'input (20,000 characters)':36} {'speakable ms: best median worst':>32}  chunks ms")
    for name, (unit, format) in INPUTS.items():
        text = (unit * (SIZE // len(unit) + 1))[:SIZE]
        best, median, worst = _time(lambda t=text, f=format: speakable(t, f), args.runs)
        speech = speakable(text, format)
        _, chunk_median, _ = _time(lambda s=speech: chunks(s, 300, 120), args.runs)
        print(
            f"{name:36} {best:14.1f} {median:8.1f} {worst:8.1f} {chunk_median:10.1f}"
            f"   {len(speech.sentences)} sentences ({speech.format})"
        )


if __name__ == "__main__":
    main()
