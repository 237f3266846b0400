#!/bin/sh
# Regenerates DejaVuSans-subset.ttf: `pip install fonttools==4.68.0`, then run from this directory.
set -eu
pyftsubset /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf \
  --unicodes="U+0020-007E,U+00B1,U+00B7,U+00D7,U+0394,U+2212,U+2013,U+2014,U+2026,U+2264,U+2265" \
  --layout-features='kern' --no-hinting --desubroutinize \
  --output-file=DejaVuSans-subset.ttf
