#!/usr/bin/env bash
# Downloads .deb packages from Debian suites newer than the machine's own (trixie-backports,
# trixie, bookworm-backports) without touching the machine's apt configuration.
#
# It builds a private apt configuration (own sources file, own lists and cache directory) whose
# archive URI is read from the machine's existing Debian sources, so no registry host is named
# here. Usage: debian-fetch.sh DEST_DIR PACKAGE...  (prints the path of each .deb it fetched)
#        debian-fetch.sh --archive-uri             (prints the archive URI and exits)
set -euo pipefail

# The archive URI: the first URI of a source whose suites include the machine's release, from
# deb822 files first, then one-line sources. Security mirrors are skipped (they carry only
# *-security suites).
archive_uri() {
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri=$(awk 'BEGIN{IGNORECASE=1}
      /^URIs:/ {u=$2}
      /^Suites:/ {for (i=2;i<=NF;i++) if ($i !~ /security/ && u != "") {print u; exit}}' "$f")
    [ -n "$uri" ] && { echo "$uri"; return; }
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    uri=$(awk '$1=="deb" && $0 !~ /security/ {for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' "$f")
    [ -n "$uri" ] && { echo "$uri"; return; }
  done
  return 1
}

uri=$(archive_uri) || { echo "debian-fetch: no Debian archive URI in /etc/apt sources" >&2; exit 1; }
if [ "${1:-}" = --archive-uri ]; then
  echo "$uri"
  exit 0
fi

dest=${1:?usage: debian-fetch.sh DEST_DIR PACKAGE... | --archive-uri}
shift
(($#)) || { echo "debian-fetch: no package named" >&2; exit 2; }

state=${IOPFD_APT_STATE:-/var/cache/iopfd/apt}
mkdir -p "$state/lists/partial" "$state/archives/partial" "$dest"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$keyring" ] || { echo "debian-fetch: $keyring missing (install debian-archive-keyring)" >&2; exit 1; }

cat > "$state/sources.sources" <<SRC
Types: deb
URIs: $uri
Suites: ${IOPFD_APT_SUITES:-trixie-backports trixie bookworm-backports}
Components: main
Signed-By: $keyring
SRC

opts=(-o "Dir::Etc::SourceList=$state/sources.sources" -o Dir::Etc::SourceParts=/dev/null
      -o "Dir::State::Lists=$state/lists" -o "Dir::Cache=$state" -o Dir::Etc::Preferences=/dev/null
      -o Dir::Etc::PreferencesParts=/dev/null -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root)

# Refresh the private lists at most once a day; they are only for this script.
stamp="$state/lists/.updated"
if [ ! -f "$stamp" ] || [ -n "$(find "$stamp" -mmin +1440)" ]; then
  apt-get "${opts[@]}" -qq update >&2
  touch "$stamp"
fi

cd "$dest"
for p in "$@"; do
  apt-get "${opts[@]}" -qq download "$p" >&2
  name=${p%%[=/]*}
  ls -t "$dest"/"$name"_*.deb | head -1
done
