"""Stream a video to a diffvos Triton server and write the masks it sends back.

    diffvos serve --bundle BUNDLE                       # in another terminal (or export-triton)
    python samples/triton/stream_video.py --url 127.0.0.1:8001 --protocol grpc \
        --input video.mp4 --mask first_mask.png --output masks/
    python samples/triton/stream_video.py --url 127.0.0.1:8000 --protocol http ...

One Triton sequence is one stream: the first request carries ``sequence_start``, the first frame
and its mask; each later request one frame; the last one ``sequence_end``. The server keeps the
stream's tracking state between requests. Masks are written as indexed PNGs named after the
frames, atomically, as ``diffvos track`` writes them. Several copies of this script with
different ``--stream-id`` values are several concurrent streams; the server batches them.
"""

from __future__ import annotations

import argparse
import sys
import time

from tritonclient.utils import InferenceServerException

from diffvos.io.frames import open_frames
from diffvos.io.masks import MaskWriter, check_mask_size, read_mask
from diffvos.serve.client import StreamClient


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="127.0.0.1:8001", help="server address (gRPC port for grpc, HTTP port for http)")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    p.add_argument("--input", "-i", required=True, help="video file or folder of frames")
    p.add_argument("--mask", "-m", required=True, help="first frame's mask (palette or 0/255 PNG)")
    p.add_argument("--output", "-o", required=True, help="folder for one mask PNG per frame")
    p.add_argument("--stream-id", default="sample", help="this stream's sequence id (text or integer)")
    args = p.parse_args(argv)

    source = open_frames(args.input)
    first = read_mask(args.mask)
    labels = check_mask_size(first, source.size)
    writer = MaskWriter(args.output, first.palette)
    stream_id = int(args.stream_id) if args.stream_id.isdigit() else args.stream_id
    client = StreamClient(args.url, stream_id, args.protocol)
    last = len(source) - 1 if source.exact_length else None
    t0, n = time.perf_counter(), 0
    try:
        for frame in source:
            result = client.step(frame.bgr, mask=labels if frame.index == 0 else None, end=frame.index == last)
            writer.write(frame.name, result.labels)
            n += 1
        if last is None:
            client.end()
    except InferenceServerException as exc:
        print(f"server refused frame {n}: {exc.status()} {exc.message()}", file=sys.stderr)
        return 1
    print(f"{n} frames tracked by the server in {time.perf_counter() - t0:.1f} s; objects {result.objects}; "
          f"masks in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
