#!/usr/bin/env bash
# Lists the longest C++ functions under the given folders, using universal-ctags
# (Debian package universal-ctags, installed by scripts/install-deps.sh).
#   scripts/function_lengths.sh [--top N] [--max LINES] [DIR...]
#     DIR          folders (or files) to scan; default: server
#     --top N      how many functions to list, longest first; default 20
#     --max LINES  also fail (exit 1) when any function is longer than LINES,
#                  listing every such function
# Output: one line per function, "LINES  FILE:LINE  NAME", where LINES counts
# from the line of the signature's name to the closing brace, both included.
# Lambdas are not tags: they count as part of the function around them.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

top=20
max=""
dirs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --top) top="${2:?--top needs a number}"; shift 2 ;;
    --max) max="${2:?--max needs a number}"; shift 2 ;;
    -h|--help) usage ;;
    -*) echo "function_lengths: unknown option $1" >&2; usage ;;
    *) dirs+=("$1"); shift ;;
  esac
done
[ ${#dirs[@]} -gt 0 ] || dirs=(server)
for n in "$top" ${max:+"$max"}; do
  [[ "$n" =~ ^[0-9]+$ ]] || { echo "function_lengths: not a number: $n" >&2; exit 2; }
done

CTAGS=""
for c in ctags-universal universal-ctags ctags; do
  if command -v "$c" >/dev/null 2>&1 &&
     "$c" --version 2>/dev/null | grep 'Universal Ctags' >/dev/null; then
    CTAGS="$c"; break
  fi
done
if [ -z "$CTAGS" ]; then
  echo "function_lengths: universal-ctags not found (scripts/install-deps.sh)" >&2
  exit 2
fi

# One row per function definition: lines, file:line, Class::Name. Scopes that
# are classes or structs are kept in the name; namespaces are dropped.
# (Headers are parsed as C++ too, for inline functions.)
rows="$("$CTAGS" -R --sort=no --languages=C++ --map-C++=+.h --kinds-C++=f \
    --fields=+ne -x \
    --_xformat='%{end}	%{line}	%{input}	%{scopeKind}	%{scope}	%{name}' \
    -o - "${dirs[@]}" |
  awk -F'\t' '$1 ~ /^[0-9]+$/ {
      name = $6
      if ($4 == "class" || $4 == "struct") {
        n = split($5, parts, "::"); name = parts[n] "::" $6
      }
      printf "%d\t%s:%d\t%s\n", $1 - $2 + 1, $3, $2, name
    }' |
  sort -t$'\t' -k1,1nr -k2,2)"

if [ -z "$rows" ]; then
  echo "function_lengths: no functions found under ${dirs[*]}" >&2
  exit 2
fi

# awk reads all of its input: `head` would close the pipe early and, under
# pipefail, the SIGPIPE'd echo would fail the script (exit 141).
printf '%s\n' "$rows" |
  awk -F'\t' -v top="$top" 'NR <= top { printf "%5d  %-48s %s\n", $1, $2, $3 }'

if [ -n "$max" ]; then
  over="$(echo "$rows" | awk -F'\t' -v max="$max" '$1 > max')"
  if [ -n "$over" ]; then
    echo "function_lengths: $(echo "$over" | wc -l) function(s) over $max lines:" >&2
    echo "$over" | awk -F'\t' '{ printf "%5d  %-48s %s\n", $1, $2, $3 }' >&2
    exit 1
  fi
fi
