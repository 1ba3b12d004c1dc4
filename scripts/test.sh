#!/usr/bin/env bash
# The whole test suite, on every supported TransformerLens line, each in its own venv.
#   bash scripts/test.sh            # tl4 tl3 tl2
#   bash scripts/test.sh tl4        # one line
# Browser tests (headless Chromium via playwright, no browser download) run on tl4; Chromium comes
# from Debian's package when apt is available, and the tests skip with a reason where it is not.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
lines=("$@"); [ ${#lines[@]} -gt 0 ] || lines=(tl4 tl3 tl2)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg PYTHONHASHSEED=0
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "note: could not install chromium; browser tests will skip"
fi
status=0
for line in "${lines[@]}"; do
  echo "=== $line: setting up .venvs/$line"
  bash scripts/setup_venv.sh "$line" || { echo "=== $line: setup FAILED"; status=1; continue; }
  echo "=== $line: pytest"
  ".venvs/$line/bin/python" -m pytest -q -p no:cacheprovider || status=1
done
[ $status = 0 ] && echo "=== all lines passed: ${lines[*]}" || echo "=== FAILURES (see above)"
exit $status
