#!/usr/bin/env bash
# The link rules' job (workflow/rules/store.smk): link a stored product into results/.
#   store_link.sh STORE PARAMS_STORE OUTPUT
# The entry was checked when the plan was made (iclscope.core.lab_store.link_wanted: its sidecar
# against the expected recipe, every file's size); here it is linked: each file hard-linked when
# the kernel allows it (same filesystem), symlinked otherwise; a directory becomes a real directory
# of links (Snakemake writes its timestamp there). A shell job: Snakemake runs `run:` jobs as a new
# Snakemake process each, seconds apiece, and a plan may link thousands of products.
set -euo pipefail
store=$1 params=$2 output=$3
key=$(printf '%s' "$params" | sed -n 's/^{"key": "\([0-9a-f]\{40\}\)".*/\1/p')
[ -n "$key" ] || { echo "no key in params.store: $params" >&2; exit 1; }
entry="$store/$key"
name=$(basename "$output")
src="$entry/$name"
if [ ! -e "$src" ] || [ ! -e "$entry/entry.json" ]; then
  echo "store entry $entry was removed after this run was planned: run snakemake again (the product is recomputed)" >&2
  exit 1
fi
mkdir -p "$(dirname "$output")"
tmp="$output.link-$$"
rm -rf "$tmp"
link() {  # hard links where allowed, else symlinks
  if [ -d "$src" ]; then
    cp -al "$src" "$tmp" 2>/dev/null || { rm -rf "$tmp"; cp -as "$(realpath "$src")" "$tmp"; }
    find "$tmp" -type d -exec chmod u+w {} +
  else
    ln "$src" "$tmp" 2>/dev/null || ln -s "$(realpath "$src")" "$tmp"
  fi
}
mkdir -p "$store/.locks" 2>/dev/null || true
if [ -w "$store/.locks" ] || [ -e "$store/.locks/$key" ]; then
  exec 9>>"$store/.locks/$key" 2>/dev/null || exec 9<"$store/.locks/$key"
  flock -s 9  # iclscope store gc / rm take it exclusively before removing the entry
fi
link
rm -rf "$output"
mv -T "$tmp" "$output"
if [ -d "$tmp" ]; then rm -rf "$tmp"; fi
how=hardlinked; [ -L "$output" ] || [ -n "$(find "$output" -type l -print -quit)" ] && how=symlinked
marker=".snakemake/iclscope-links/$output.key"
mkdir -p "$(dirname "$marker")"
printf '%s' "$key" > "$marker"
{ mkdir -p "$store/.uses" && printf '%s\t%s\t%s\t%s\n' "$(date +%s)" "$(id -un)" "$(hostname)" \
    "$(realpath -s "$output")" >> "$store/.uses/$key"; } 2>/dev/null || true
echo "$how $output from $entry"
