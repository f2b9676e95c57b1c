#!/bin/sh
# One-shot: create the outputs bucket on the local S3 (SeaweedFS) if it is missing,
# then write a marker object (the first write allocates SeaweedFS volumes, so the first
# job's upload does not pay for it). Idempotent: safe on every `docker-compose up`.
# Runs in the amazon/aws-cli image; credentials come from AWS_ACCESS_KEY_ID/SECRET.
set -eu

endpoint="${S3_ENDPOINT_URL:?S3_ENDPOINT_URL is required}"
bucket="${S3_BUCKET:?S3_BUCKET is required}"

s3api() { aws --endpoint-url "$endpoint" s3api "$@"; }

attempt=0
until s3api head-bucket --bucket "$bucket" >/dev/null 2>&1 \
      || s3api create-bucket --bucket "$bucket" >/dev/null; do
    attempt=$((attempt + 1))
    if [ "$attempt" -ge 30 ]; then
        echo "s3-init: bucket '$bucket' not ready at $endpoint after $attempt attempts" >&2
        exit 1
    fi
    sleep 2
done

printf ok | aws --endpoint-url "$endpoint" s3 cp - "s3://$bucket/.dq-ready" >/dev/null
echo "s3-init: bucket '$bucket' ready at $endpoint"
