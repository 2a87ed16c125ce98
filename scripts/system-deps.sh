#!/usr/bin/env bash
# The system packages the test suite uses, installed from Debian's archive when they are missing:
#   wordnet-base, wordnet-sense-index  lemmatisation (`prepare posts`) and the lexnames(5WN) page
#   chromium, chromium-driver          the browser tests of `hashtagkit serve`'s upload page
# `make test` and `.ci/run` (through `make test`) both run this. Without root or apt-get it installs
# nothing and says so; the tests that need a missing package then skip, naming `make system-deps`.
set -uo pipefail

missing=()
[ -f /usr/share/wordnet/data.noun ] && [ -f /usr/share/man/man5/lexnames.5WN.gz ] || missing+=(wordnet-base)
[ -f /usr/share/wordnet/index.sense ] || missing+=(wordnet-sense-index)
[ -x /usr/bin/chromium ] || missing+=(chromium chromium-driver)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: the system packages ${missing[*]} are missing and cannot be installed here (needs root and apt-get);"
  echo "      the tests that use them will skip. As root: make system-deps"
  exit 0
fi
echo "installing system packages for the tests: ${missing[*]} (apt-get; about a minute)"
log=$(mktemp)
if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}") >"$log" 2>&1; then
  echo "note: apt-get could not install ${missing[*]}; the tests that use them will skip (or fail under"
  echo "      HASHTAGKIT_REQUIRE_SHARED=1). Last lines of apt-get:"
  tail -n 5 "$log" | sed 's/^/      /'
fi
rm -f "$log"
exit 0
