"""Write the demo's synthetic two-object clip (JPEG frames + first palette mask) to a folder.

    python samples/make_demo_clip.py samples/demo_clip
    diffvos track --bundle BUNDLE --input samples/demo_clip/JPEGImages \
        --mask samples/demo_clip/Annotations/00000.png --output out/ --overlay out.mp4
"""

import sys

from diffvos.sample_clip import make_clip

if __name__ == "__main__":
    frames, mask = make_clip(sys.argv[1] if len(sys.argv) > 1 else "samples/demo_clip")
    print(f"frames: {frames}\nfirst mask: {mask}")
