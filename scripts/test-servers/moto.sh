#!/usr/bin/env bash
# A second S3 implementation for the end-to-end tests: moto's server, in auth mode.
#
#   eval "$(scripts/test-servers/moto.sh start)"   # prints the OFFLOAD_TEST_S3_* exports
#   cargo test --test e2e store                     # store tests now also run against moto
#   scripts/test-servers/moto.sh stop
#
# moto checks SigV4 only in auth mode: INITIAL_NO_AUTH_ACTION_COUNT=3 lets exactly three
# unauthenticated actions through (create an IAM user, give it a '*' policy, create its access
# key); every later request must be signed with that key.
set -euo pipefail

DIR=${MOTO_DIR:-/tmp/offload-moto}
PORT=${MOTO_PORT:-5055}
BUCKET=${MOTO_BUCKET:-offload-test}
VENV=$DIR/venv

start() {
    mkdir -p "$DIR"
    if [ ! -x "$VENV/bin/moto_server" ]; then
        python3 -m venv "$VENV" >&2
        "$VENV/bin/pip" install --quiet 'moto[server]' boto3 >&2
    fi
    if [ -f "$DIR/pid" ] && kill -0 "$(cat "$DIR/pid")" 2>/dev/null; then
        echo "moto already running (pid $(cat "$DIR/pid")); stop it first" >&2
        exit 1
    fi
    INITIAL_NO_AUTH_ACTION_COUNT=3 nohup "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" \
        >"$DIR/moto.log" 2>&1 &
    echo $! >"$DIR/pid"
    # Wait for the port with a bare TCP connect: an HTTP probe would use up a free action.
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
        sleep 0.1
    done
    ENDPOINT="http://127.0.0.1:$PORT" BUCKET="$BUCKET" "$VENV/bin/python" - <<'PY'
import json, os
import boto3
from botocore.exceptions import ClientError

endpoint, bucket = os.environ["ENDPOINT"], os.environ["BUCKET"]
def client(kind, key="unused", secret="unused"):
    return boto3.client(kind, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=key, aws_secret_access_key=secret)

iam = client("iam")
iam.create_user(UserName="offload")
iam.put_user_policy(UserName="offload", PolicyName="all", PolicyDocument=json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}))
key = iam.create_access_key(UserName="offload")["AccessKey"]
ak, sk = key["AccessKeyId"], key["SecretAccessKey"]
client("s3", ak, sk).create_bucket(Bucket=bucket)
try:
    client("s3", ak, sk + "x").list_objects_v2(Bucket=bucket)
    raise SystemExit("moto accepted a wrong secret: auth mode is off")
except ClientError as e:
    assert e.response["Error"]["Code"] in ("SignatureDoesNotMatch", "AccessDenied"), e

print(f"export OFFLOAD_TEST_S3_ENDPOINT={endpoint}")
print(f"export OFFLOAD_TEST_S3_ACCESS_KEY={ak}")
print(f"export OFFLOAD_TEST_S3_SECRET_KEY={sk}")
print(f"export OFFLOAD_TEST_S3_BUCKET={bucket}")
PY
}

stop() {
    if [ -f "$DIR/pid" ]; then
        kill "$(cat "$DIR/pid")" 2>/dev/null || true
        rm -f "$DIR/pid"
    fi
}

case "${1:-}" in
start) start ;;
stop) stop ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
