#!/bin/sh
# The compose stack's one-shot `s3-init` service: creates Larder's bucket in
# SeaweedFS and the S3 identity Larder signs with, from the mounted secrets.
# Idempotent: a second run finds the bucket and re-applies the same identity.
# Until the first identity exists SeaweedFS's S3 gateway accepts anonymous
# requests; only the stack's private `backend` network reaches it, and the
# Larder services start after this has succeeded.
set -eu

master="${SEAWEEDFS_MASTER:-s3:9333}"
bucket="${LARDER_BUCKET:-larder}"
secrets="${SECRETS_DIR:-/run/secrets}"
key_id="$(cat "$secrets/s3_access_key_id")"
secret="$(cat "$secrets/s3_secret_access_key")"

# `weed shell` reads commands from stdin and exits non-zero on an error.
weed_shell() {
  printf '%s\n' "$1" | weed shell -master="$master"
}

# The master may still be electing itself right after its healthcheck passed.
tries=0
until weed_shell "s3.bucket.list" >/tmp/buckets 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge 30 ]; then
    cat /tmp/buckets >&2
    exit 1
  fi
  sleep 2
done

if grep -q "^ *$bucket[[:space:]]" /tmp/buckets || grep -q "^ *$bucket\$" /tmp/buckets; then
  echo "bucket $bucket exists"
else
  weed_shell "s3.bucket.create -name $bucket"
fi

# Read, Write (PUT, DELETE, multipart) and List (only `larder-admin verify`
# lists) on this bucket alone. Its output echoes the secret: not logged.
weed_shell "s3.configure -user=larder -access_key=$key_id -secret_key=$secret -buckets=$bucket -actions=Read,Write,List -apply" >/dev/null
echo "identity larder may read, write and list bucket $bucket"
