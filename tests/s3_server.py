"""moto's S3 server mode on a free local port, for tests of s3:// inputs and outputs."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
import urllib.request

from helpers import free_ports


class S3Server:
    def __init__(self, timeout: float = 30):
        [self.port] = free_ports(1)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.environment = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint}
        self._names = itertools.count()
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.close()
                    raise RuntimeError("moto's S3 server did not start")
                time.sleep(0.05)

    def __call__(self) -> str:
        return self.new_bucket()

    def new_bucket(self) -> str:
        name = f"bucket{next(self._names)}"
        request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        urllib.request.urlopen(request, timeout=10).close()
        return f"s3://{name}"

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
