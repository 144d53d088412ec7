#!/usr/bin/env bash
# Fails when a workspace member declares a dependency its sources never mention (CI lint stage).
#
# For every member of the root Cargo.toml, each name under [dependencies], [dev-dependencies] and
# [build-dependencies] (also their `[target.….dependencies]` and `[dependencies.NAME]` forms) must
# appear, with `-` read as `_`, in the member's src/, tests/, benches/, examples/ or build.rs (and
# in the files those pull in with `#[path = "…"]`) as `NAME::`, `use NAME`, `extern crate NAME` or
# `crate = "NAME"` (serde-style attributes). Offline, bash + grep + awk only. A dependency used only
# through its features or another crate's macros goes in ALLOW below, with the reason.
#
# Usage: tests/scripts/unused-deps.sh            exit 0, or 1 naming each unused dependency
set -euo pipefail
cd "$(dirname "$0")/../.."

# "package-name:dependency  reason" — dependencies the search above cannot see being used.
ALLOW=(
)

allowed() {
  local entry
  for entry in "${ALLOW[@]+"${ALLOW[@]}"}"; do
    [[ ${entry%% *} == "$1:$2" ]] && return 0
  done
  return 1
}

# The members' directories, from `members = [ … ]` of the root manifest (one line or several).
members() {
  awk '
    /^[[:space:]]*members[[:space:]]*=/ { on = 1 }
    on {
      line = $0
      while (match(line, /"[^"]*"/)) {
        print substr(line, RSTART + 1, RLENGTH - 2)
        line = substr(line, RSTART + RLENGTH)
      }
      if ($0 ~ /\]/) exit
    }
  ' Cargo.toml
}

# The package name of a manifest.
package_name() {
  awk '
    /^\[/ { in_pkg = ($0 ~ /^\[package\][[:space:]]*$/) }
    in_pkg && /^[[:space:]]*name[[:space:]]*=/ {
      sub(/^[^=]*=[[:space:]]*"/, ""); sub(/".*/, ""); print; exit
    }
  ' "$1"
}

# The dependency names of a manifest, one per line: keys at the top level of a dependency section
# (lines inside a multi-line inline table or array are skipped), and `[dependencies.NAME]` tables.
dependency_names() {
  awk '
    /^[[:space:]]*\[/ {
      header = $0
      sub(/^[[:space:]]*\[[[:space:]]*/, "", header); sub(/[[:space:]]*\].*$/, "", header)
      deps = 0
      if (header ~ /^(target\..+\.)?(dev-|build-)?dependencies$/) { deps = 1; depth = 0; next }
      if (header ~ /^(target\..+\.)?(dev-|build-)?dependencies\.[A-Za-z0-9_-]+$/) {
        name = header; sub(/^.*dependencies\./, "", name); print name
      }
      next
    }
    deps {
      line = $0
      gsub(/"([^"\\]|\\.)*"/, "\"\"", line)   # strings: their brackets do not count
      sub(/#.*/, "", line)                       # comments
      if (depth == 0 && match(line, /^[[:space:]]*[A-Za-z0-9_-]+[[:space:]]*[.=]/)) {
        name = substr(line, RSTART, RLENGTH); gsub(/[[:space:].=]/, "", name); print name
      }
      opens = gsub(/[{[]/, "&", line); closes = gsub(/[]}]/, "&", line)
      depth += opens - closes
    }
  ' "$1" | sort -u
}

# The Rust files of a member: its source directories, build.rs, and the files they pull in with
# `#[path = "…"]` (relative to the directory of the file that says it).
source_files() {
  local dir=$1 sub file target
  for sub in src tests benches examples; do
    [[ -d $dir/$sub ]] && find "$dir/$sub" -name '*.rs' -type f
  done
  [[ -f $dir/build.rs ]] && echo "$dir/build.rs"
  for sub in src tests benches examples; do
    [[ -d $dir/$sub ]] || continue
    grep -rE --include='*.rs' -o '#\[path[[:space:]]*=[[:space:]]*"[^"]+"\]' "$dir/$sub" 2>/dev/null |
      while IFS= read -r hit; do
        file=${hit%%:*}
        target=${hit#*\"}
        target=${target%\"*}
        [[ -f $(dirname "$file")/$target ]] && echo "$(dirname "$file")/$target"
      done
  done
  return 0
}

status=0
checked=0
while IFS= read -r member; do
  manifest=$member/Cargo.toml
  [[ -f $manifest ]] || { echo "unused-deps: $manifest (a workspace member) is missing" >&2; exit 2; }
  crate=$(package_name "$manifest")
  mapfile -t files < <(source_files "$member" | sort -u)
  while IFS= read -r dep; do
    [[ -n $dep ]] || continue
    checked=$((checked + 1))
    name=${dep//-/_}
    pattern="(^|[^A-Za-z0-9_])${name}::|(^|[^A-Za-z0-9_])use[[:space:]]+${name}([^A-Za-z0-9_]|\$)"
    pattern+="|extern[[:space:]]+crate[[:space:]]+${name}([^A-Za-z0-9_]|\$)"
    pattern+="|crate[[:space:]]*=[[:space:]]*\"(::)?${name}\""
    if ((${#files[@]})) && grep -qE "$pattern" "${files[@]}"; then
      continue
    fi
    allowed "$crate" "$dep" && continue
    echo "$crate: dependency $dep is declared but never used"
    status=1
  done < <(dependency_names "$manifest")
done < <(members)

if ((checked == 0)); then
  echo "unused-deps: found no dependencies at all; the manifest parsing is broken" >&2
  exit 2
fi
if ((status)); then
  echo "(remove it from the crate's Cargo.toml, or add it to ALLOW in $0 with the reason)" >&2
fi
exit $status
