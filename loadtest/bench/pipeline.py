"""What the transcoding pipeline costs over running ffmpeg by hand.

    python -m reelcdn.loadtest.bench.pipeline [--seconds 15] [--size 1920x1080] [--repeat 3]

The same source (a clip made by ffmpeg from lavfi sources, 30 fps, with audio) and the same
default ladder (360p, 720p, 1080p; the transcoder's encoder options) two ways, alternating:

* **by hand**: one ffmpeg command encoding every rendition (the transcoder's own argument
  builder, all rungs and the poster in one run), nothing else;
* **through the pipeline**: a job enqueued on the SQLite queue, leased by a
  ``TranscodeWorker`` (heartbeat thread), probed, encoded in one ffmpeg run while the lowest
  rendition is published segment by segment, segments digested, Merkle roots computed, the
  renditions published atomically into a filesystem store, the catalog moved to ``ready``.

It prints the medians, the ratio (target: the pipeline at most 10 % slower), the median of
each run's own ratio, and when the first rendition was published. Both run on this machine:
alternating runs (which one goes first alternates too), medians, so a noisy neighbour hits
both.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from reelcdn.loadtest.bench.common import log, positive_int
from reelcdn.origin.demo import ffmpeg_exe, run_ffmpeg
from reelcdn.origin.pipeline import TranscodeWorker, enqueue_on_upload
from reelcdn.origin.probe import probe
from reelcdn.origin.queue import SqliteQueue
from reelcdn.origin.storage import FsStore
from reelcdn.origin.transcode import Ladder, _encode
from reelcdn.origin.videos import VideoCatalog


def make_source(path: Path, seconds: float, size: str) -> Path:
    run_ffmpeg(ffmpeg_exe(), [
        "-y", "-f", "lavfi", "-i", f"testsrc2=s={size}:r=30:d={seconds}",
        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:d={seconds}",
        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac",
        "-shortest", str(path),
    ], timeout=300, what="source clip")
    return path


def by_hand(source: Path, work: Path, ladder: Ladder) -> float:
    info = probe(source)  # (outside the timing: the command is written knowing the source)
    rungs = ladder.for_source(info)
    out = work / "hand"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.monotonic()
    _encode(ffmpeg_exe(), source, rungs, out, info, ladder, poster=True, timeout=600,
            what="by hand")
    return time.monotonic() - started


def through_pipeline(source: Path, work: Path, ladder: Ladder, run: int) -> tuple[float, float]:
    base = work / f"pipeline-{run}"
    base.mkdir(parents=True)
    queue = SqliteQueue(base / "queue.sqlite")
    catalog = VideoCatalog(base / "videos.sqlite")
    worker = TranscodeWorker(queue, FsStore(base / "origin"), catalog, workdir=base / "work",
                             ladder=ladder)
    first: list[float] = []
    worker.on_published = lambda video_id, meta: first.append(time.monotonic())
    started = time.monotonic()
    enqueue_on_upload(queue, catalog)(f"bench{run}", source, {"title": "bench"}, "bench")
    assert worker.run_one()
    total = time.monotonic() - started
    row = catalog.get(f"bench{run}")
    if row is None or row["status"] != "ready":
        raise RuntimeError(f"the pipeline did not finish: {row}")
    queue.close()
    catalog.close()
    shutil.rmtree(base, ignore_errors=True)
    return total, (first[0] - started) if first else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="source length (15)")
    parser.add_argument("--size", default="1920x1080", help="source size (1920x1080)")
    parser.add_argument("--repeat", type=positive_int, default=3,
                        help="runs of each, alternating (3)")
    args = parser.parse_args(argv)
    ladder = Ladder()
    work = Path(tempfile.mkdtemp(prefix="reelcdn-pipeline-bench-"))
    try:
        source = make_source(work / "source.mp4", args.seconds, args.size)
        hand: list[float] = []
        piped: list[float] = []
        firsts: list[float] = []
        for run in range(args.repeat):
            # Which goes first alternates (ABBA…): on a shared machine whose load drifts, a
            # fixed order charges the drift to whichever always runs second.
            if run % 2:
                total, first = through_pipeline(source, work, ladder, run)
                hand.append(by_hand(source, work, ladder))
            else:
                hand.append(by_hand(source, work, ladder))
                total, first = through_pipeline(source, work, ladder, run)
            piped.append(total)
            firsts.append(first)
            log(f"run {run + 1}/{args.repeat}: by hand {hand[-1]:.2f} s, pipeline {total:.2f} s "
                f"(first rendition {first:.2f} s)")
        h, p = statistics.median(hand), statistics.median(piped)
        print(f"### Transcoding pipeline vs one ffmpeg command ({args.seconds:g} s "
              f"{args.size} 30 fps source, ladder {', '.join(r.name for r in ladder.rungs)})\n")
        print(f"Command: `python -m reelcdn.loadtest.bench.pipeline --seconds {args.seconds:g} "
              f"--size {args.size} --repeat {args.repeat}`\n")
        print("| | median | runs |\n|---|---:|---|")
        print(f"| one ffmpeg command, by hand | {h:.2f} s | "
              f"{' · '.join(f'{x:.2f}' for x in hand)} |")
        print(f"| queue + worker + publish | {p:.2f} s | "
              f"{' · '.join(f'{x:.2f}' for x in piped)} |")
        print(f"| first rendition published (pipeline) | {statistics.median(firsts):.2f} s | "
              f"{' · '.join(f'{x:.2f}' for x in firsts)} |")
        paired = statistics.median(x / y for x, y in zip(piped, hand, strict=True))
        print(f"\npipeline / by hand: **{p / h:.2f}** (target ≤ 1.10); the median of each "
              f"run's own ratio: {paired:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
