"""Media for tests: small clips made by the real ffmpeg (imageio-ffmpeg's binary)."""

from __future__ import annotations

from pathlib import Path

from reelcdn.origin.demo import ffmpeg_exe, run_ffmpeg


def make_clip(path: Path, *, size: str = "640x360", seconds: float = 6.0, audio: bool = True,
              extra: list[str] | None = None) -> Path:
    args = ["-y", "-f", "lavfi", "-i", f"testsrc=s={size}:r=30:d={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:d={seconds}"]
    args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    args += ["-c:a", "aac", "-shortest"] if audio else []
    run_ffmpeg(ffmpeg_exe(), [*args, *(extra or []), str(path)], timeout=60, what="clip")
    return path
