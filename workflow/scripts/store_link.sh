#!/usr/bin/env bash
# The link rules' job (workflow/rules/store.smk): link a stored product into results/.
#   store_link.sh STORE PARAMS_STORE OUTPUT
# The entry was checked when the plan was made (iclscope.core.lab_store.link_wanted: its sidecar
# against the expected recipe, every file's size); here it is linked: each file hard-linked when
# the kernel allows it (same filesystem), symlinked otherwise; a directory becomes a real directory
# of links (Snakemake writes its timestamp there). A shell job with few processes: Snakemake runs
# each `run:` job as a new Snakemake process (seconds), and a plan may link thousands of products.
set -euo pipefail
store=$1 params=$2 output=$3
re='^\{"key": "([0-9a-f]{40})"'
[[ $params =~ $re ]] || { echo "no key in params.store: $params" >&2; exit 1; }
key=${BASH_REMATCH[1]}
entry="$store/$key"
src="$entry/${output##*/}"
if [[ ! -e $src || ! -e $entry/entry.json ]]; then
  echo "store entry $entry was removed after this run was planned: run snakemake again (the product is recomputed)" >&2
  exit 1
fi
[[ $src = /* ]] || src="$PWD/$src"
tmp="$output.link-$$"
marker=".snakemake/iclscope-links/$output.key"
mkdir -p "${output%/*}" "${marker%/*}"
rm -rf "$tmp"
shared_dir() {  # .locks, .uses: writable by whoever may write the store, whatever our umask
  [[ -d $store/$1 ]] || { mkdir "$store/$1" && chmod --reference="$store" "$store/$1"; } 2>/dev/null
}
if [[ -e $store/.locks/$key ]] || shared_dir .locks; then
  { exec 9>>"$store/.locks/$key"; } 2>/dev/null || { exec 9<"$store/.locks/$key"; } 2>/dev/null || true
  flock -s 9 2>/dev/null || true  # iclscope store gc / rm take it exclusively before removing the entry
fi
how=hardlinked
if [[ -d $src ]]; then
  cp -al "$src" "$tmp" 2>/dev/null || { rm -rf "$tmp"; cp -as "$src" "$tmp"; how=symlinked; }
  find "$tmp" -type d -exec chmod u+w {} +  # our directories; the files are the entry's, read-only
else
  ln "$src" "$tmp" 2>/dev/null || { ln -s "$src" "$tmp"; how=symlinked; }
fi
rm -rf "$output"
mv -T "$tmp" "$output"
printf '%s' "$key" > "$marker"
printf -v now '%(%s)T' -1
shared_dir .uses &&
  { printf '%s\t%s\t%s\t%s\n' "$now" "${USER:-$(id -un)}" "${HOSTNAME:-host}" "$PWD/$output" >> "$store/.uses/$key"; } \
  2>/dev/null || true
echo "$how $output from $entry"
