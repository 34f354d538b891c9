"""Pixel statistics of a screenshot, for the report's browser test:
inspect_png.py IMAGE.png OUT.json [#rrggbb ...] writes its width, height, the fraction of
pixels that are not white, the number of distinct colors, and how many pixels have each of the
given colors exactly. Uses Pillow (installed into the venv by launch/setup.sh)."""
import json
import sys

from PIL import Image

img = Image.open(sys.argv[1]).convert("RGB")
w, h = img.size
hist = img.getcolors(maxcolors=w * h)  # [(count, (r, g, b)), ...]
by_color = {"#%02x%02x%02x" % rgb: n for n, rgb in hist}
nonwhite = sum(n for n, rgb in hist if rgb != (255, 255, 255))
out = {
    "width": w,
    "height": h,
    "nonwhite_fraction": nonwhite / float(w * h),
    "distinct_colors": len(hist),
    "pixels": {c: by_color.get(c.lower(), 0) for c in sys.argv[3:]},
}
with open(sys.argv[2], "w") as f:
    json.dump(out, f)
