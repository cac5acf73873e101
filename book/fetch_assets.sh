#!/usr/bin/env bash
# Fetch the JavaScript the offline book needs (require.js, the widget manager, MathJax) with npm, into $1.
set -euo pipefail
dest=${1:-$(dirname "$0")/_vendor}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent @jupyter-widgets/html-manager@1.0.6 requirejs@2.3.7 mathjax@3.2.2 >/dev/null)
mkdir -p "$dest/mathjax/output/chtml"
for pkg in "$tmp"/*.tgz; do mkdir -p "$tmp/x" && tar -xzf "$pkg" -C "$tmp/x" && mv "$tmp/x/package" "$tmp/$(basename "$pkg" .tgz)" && rm -rf "$tmp/x"; done
cp "$tmp"/jupyter-widgets-html-manager-*/dist/embed-amd.js "$dest/"
cp "$tmp"/requirejs-*/require.js "$dest/"
cp "$tmp"/mathjax-*/es5/tex-mml-chtml.js "$dest/mathjax/"
cp -r "$tmp"/mathjax-*/es5/output/chtml/fonts "$dest/mathjax/output/chtml/"
echo "book assets in $dest"
