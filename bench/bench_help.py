"""Budget: `cidflow --help` is faster than both `dvc --help` and `prefect --help` (lazy imports).

One warm-up run each, then 7 timed runs each, interleaved; median wall time of the whole
process; peak RSS recorded too.
"""

from __future__ import annotations

import argparse

from _common import BIN, env_with, log, median, run, verdict, write_result

TOOLS = ("cidflow", "dvc", "prefect")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=7)
    args = p.parse_args()
    env = env_with()
    for t in TOOLS:
        run([str(BIN / t), "--help"], env=env)  # warm-up
    times: dict[str, list[float]] = {t: [] for t in TOOLS}
    rss: dict[str, list[int]] = {t: [] for t in TOOLS}
    for _ in range(args.runs):
        for t in TOOLS:
            r = run([str(BIN / t), "--help"], env=env)
            times[t].append(r["seconds"])
            rss[t].append(r["peak_rss"])
    med = {t: median(times[t]) for t in TOOLS}
    log("  " + "  ".join(f"{t} {med[t] * 1000:.0f} ms" for t in TOOLS))
    ok = med["cidflow"] < med["dvc"] and med["cidflow"] < med["prefect"]
    write_result(
        "bench_help",
        {
            "what": "<tool> --help, whole process",
            "peers": ["dvc --help", "prefect --help"],
            "runs": args.runs,
            "seconds": times,
            "peak_rss": rss,
            "median_seconds": med,
            "ratio_vs_dvc": med["dvc"] / med["cidflow"],
            "ratio_vs_prefect": med["prefect"] / med["cidflow"],
            "budget": "faster than both",
            "verdict": verdict(ok),
        },
    )
    print(
        f"bench_help: cidflow {med['cidflow'] * 1000:.0f} ms  dvc {med['dvc'] * 1000:.0f} ms "
        f"({med['dvc'] / med['cidflow']:.1f}x)  prefect {med['prefect'] * 1000:.0f} ms "
        f"({med['prefect'] / med['cidflow']:.1f}x) {verdict(ok)}"
    )


if __name__ == "__main__":
    main()
