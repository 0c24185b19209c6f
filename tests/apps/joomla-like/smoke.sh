#!/usr/bin/env bash
# Start the joomla-like app on 127.0.0.1:${PORT:-18091} with a temporary images/ folder, upload
# one JPEG each way Joomla does (J3 multipart + redirect, J3 JSON, J4 api.files, J4/5 web
# services API), check the answers and that the files are served, then stop it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PORT="${PORT:-18091}"
J="http://127.0.0.1:$PORT"
tmp="$(mktemp -d)"
pid=""
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  if [[ -n "$pid" ]]; then kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
mkdir -p "$tmp/images"
JOOMLA_LIKE_IMAGES="$tmp/images" setsid php -S "127.0.0.1:$PORT" -t "$here" "$here/router.php" \
  >"$tmp/php.log" 2>&1 </dev/null &
pid=$!
for _ in $(seq 1 50); do curl -s -o /dev/null "$J/" && break; sleep 0.1; done
# shellcheck disable=SC2016  # PHP code, not shell
php -r '$i=imagecreatetruecolor(640,480);imagefilledrectangle($i,0,0,639,479,imagecolorallocate($i,40,120,200));imagejpeg($i,$argv[1]);' "$tmp/p.jpg"
jar="$tmp/jar"
fail=0
check() { # name expected actual
  if [[ "$2" == "$3" ]]; then echo "ok   $1"; else echo "FAIL $1: expected [$2] got [$3]"; fail=1; fi
}
tok=$(curl -s -c "$jar" -b "$jar" "$J/administrator/index.php?option=com_media" |
  grep -o '"csrf.token":"[0-9a-f]*"' | cut -d'"' -f4)
# Joomla 3, media manager form: 303 back to the manager
loc=$(curl -s -o /dev/null -w '%{http_code} %{redirect_url}' -c "$jar" -b "$jar" -H 'Expect:' \
  -F "Filedata[]=@$tmp/p.jpg;filename=j3 form.jpg" -F folder=stories \
  "$J/administrator/index.php?option=com_media&task=file.upload&tmpl=component&$tok=1")
check "J3 form upload answers 303" "303 $J/administrator/index.php?option=com_media&folder=stories" "$loc"
check "J3 form file served" 200 "$(curl -s -o /dev/null -w '%{http_code}' "$J/images/stories/j3-form.jpg")"
# Joomla 3, JSON uploader
out=$(curl -s -c "$jar" -b "$jar" -H 'Expect:' -F "Filedata=@$tmp/p.jpg;filename=j3.jpg" \
  "$J/administrator/index.php?option=com_media&task=file.upload&tmpl=component&format=json&$tok=1")
check "J3 json answer" '{"status":"1","message":"Upload of \"\/images\/j3.jpg\" successful.","error":"Upload of \"\/images\/j3.jpg\" successful.","location":"\/images\/j3.jpg"}' "$out"
# Joomla 4/5 media manager
printf '{"%s":"1","name":"j4.jpg","content":"%s"}' "$tok" "$(base64 -w0 "$tmp/p.jpg")" >"$tmp/j4.json"
out=$(curl -s -c "$jar" -b "$jar" -H 'Content-Type: application/json' --data-binary @"$tmp/j4.json" \
  "$J/administrator/index.php?option=com_media&format=json&task=api.files&path=local-images:/sub")
check "J4 api.files answer" '"local-images:\/sub\/j4.jpg" "http:\/\/127.0.0.1:'"$PORT"'\/images\/sub\/j4.jpg"' \
  "$(grep -o '"path":"[^"]*"\|"thumb_path":"[^"]*"' <<<"$out" | cut -d: -f2- | tr '\n' ' ' | sed 's/ $//')"
check "J4 api.files again is 409" 409 "$(curl -s -o /dev/null -w '%{http_code}' -c "$jar" -b "$jar" \
  -H 'Content-Type: application/json' --data-binary @"$tmp/j4.json" \
  "$J/administrator/index.php?option=com_media&format=json&task=api.files&path=local-images:/sub")"
# Joomla 4.1+/5 web services
printf '{"path":"local-images:/api/j5.jpg","content":"%s"}' "$(base64 -w0 "$tmp/p.jpg")" >"$tmp/j5.json"
code=$(curl -s -o "$tmp/j5.out" -w '%{http_code} %{content_type}' -H 'Authorization: Bearer joomla-like-api-token' \
  -H 'Content-Type: application/json' --data-binary @"$tmp/j5.json" "$J/api/index.php/v1/media/files")
check "API answer" "200 application/vnd.api+json; charset=utf-8" "$code"
check "API file served" 200 "$(curl -s -o /dev/null -w '%{http_code}' "$J/images/api/j5.jpg")"
check "missing image is 404" 404 "$(curl -s -o /dev/null -w '%{http_code}' "$J/images/none.jpg")"
check "files in images/" "api/j5.jpg j3.jpg stories/j3-form.jpg sub/j4.jpg" \
  "$(cd "$tmp/images" && find . -type f | sed 's|^\./||' | sort | tr '\n' ' ' | sed 's/ $//')"
[[ $fail == 0 ]] && echo "joomla-like smoke: all ok"
exit $fail
