"""A real S3 API on loopback for tests and benchmarks: moto's threaded server, one per session.

Clients reach it only through the standard environment variables (:meth:`S3Server.env`), as they
would reach S3 itself; nothing in s3fs or botocore is mocked. ``iam_auth()`` makes the server check
credentials (moto accepts any by default), for the tests of refused credentials.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["S3Server", "running_s3_server"]

ACCESS_KEY = "testing-access-key"
SECRET_KEY = "testing-secret-key"
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str

    def env(self) -> dict[str, str]:
        """The environment a client of this server needs, and no more."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def fresh_url(self) -> str:
        """A prefix no other test has used, in the session's bucket."""
        return f"s3://{self.bucket}/{uuid.uuid4().hex[:12]}"

    @contextmanager
    def iam_auth(self) -> Iterator[None]:
        """Check credentials while inside (the server runs in this process, so its settings are ours)."""
        from moto.core import enable_iam_authentication

        with enable_iam_authentication():
            yield


@contextmanager
def running_s3_server() -> Iterator[S3Server]:
    """Start moto's server on a free loopback port with one bucket; stop it on exit."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        s3 = S3Server(endpoint=f"http://{host}:{port}", bucket="checkpoints-test")
        boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id=ACCESS_KEY,
                     aws_secret_access_key=SECRET_KEY, region_name=REGION).create_bucket(Bucket=s3.bucket)
        yield s3
    finally:
        server.stop()
