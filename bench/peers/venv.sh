# Sourced by the peers' setup scripts: `peer_venv VENV "PINS" "IMPORTS"` makes a virtual
# environment at VENV holding the space-separated requirements PINS (pip, PyPI), checks that
# python can import IMPORTS, and records PINS in a stamp file; a VENV whose stamp holds the same
# PINS is left as it is (a warm run does nothing). Python: $PYTHON, else python3.
peer_venv() {
  local venv=$1 pins=$2 imports=$3
  local stamp="$venv/.dfp-stamp"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$pins" ] && [ -x "$venv/bin/python" ]; then
    return 0
  fi
  "${PYTHON:-python3}" -m venv "$venv"
  # shellcheck disable=SC2086  # $pins is a space-separated list of requirements
  "$venv/bin/pip" install -q $pins
  "$venv/bin/python" -c "import $imports"
  echo "$pins" > "$stamp"
  echo "venv ready: $venv ($pins)" >&2
}
