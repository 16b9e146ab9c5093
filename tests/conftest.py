"""Shared test fixtures: one local Ray instance and one local S3 server per test session.

Starting Ray costs seconds on a 2-core machine, so every test that needs it takes ``ray_session``
instead of calling ``ray.init`` itself; ``s3_server`` is a real moto S3 HTTP server on 127.0.0.1
(s3fs / zarr talk to it exactly as to S3).
"""

from __future__ import annotations

import logging
import os
import socket

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LOADER_RESOURCE = "loader"


@pytest.fixture(scope="session")
def ray_session():
    import ray

    started = False
    if not ray.is_initialized():
        # a private cluster whatever address file another Ray left behind; one custom resource stands for the
        # CPU-only loader nodes of a heterogeneous cluster (data.read_resources)
        ray.init(address="local", num_cpus=2, resources={LOADER_RESOURCE: 4}, include_dashboard=False,
                 logging_level=logging.WARNING)
        started = True
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """``{"endpoint_url", "storage_options", "bucket"}`` of a fresh moto S3 server (bucket created)."""
    from moto.server import ThreadedMotoServer

    for k, v in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                 ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(k, v)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    so = {"key": "testing", "secret": "testing", "endpoint_url": endpoint,
          "client_kwargs": {"region_name": "us-east-1"}}
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="anysat-test")
    try:
        yield {"endpoint_url": endpoint, "storage_options": so, "bucket": "anysat-test"}
    finally:
        server.stop()
