"""One tiny float32 checkpoint, one server on 127.0.0.1 in this process and one started as an operator would in a
child process, for the serve tests; tests that need other limits start their own app on the same loaded model."""

import pytest
import torch

from zamba2vl.pipeline import load
from zamba2vl.serve.app import create_app
from zamba2vl.serve.runner import BackgroundServer
from zamba2vl.serve.settings import MiB, ServeSettings
from zamba2vl.testing import make_tiny_checkpoint

from serve_helpers import MODEL, ServerProcess


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("serve") / MODEL, seed=3)


@pytest.fixture(scope="session")
def vlm(tiny_folder):
    return load(tiny_folder, dtype="float32")


def settings(**over) -> ServeSettings:
    base = dict(model_name=MODEL, max_batch_size=32, max_queue=128, max_body_bytes=8 * MiB, max_images=4,
                max_image_pixels=4096 * 4096, request_timeout_s=120.0, torch_threads=1)
    return ServeSettings(**{**base, **over})


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Reference answers are computed on one thread, as the servers' model threads run: on 2 shared cores the tiny
    model is several times faster on one thread than on two that compete with the server's."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def server(vlm):
    with BackgroundServer(create_app(vlm, settings())) as s:
        yield s


@pytest.fixture(scope="session")
def server_process(tiny_folder):
    """The server as an operator starts it, in its own process (its memory is its own); stopped with Ctrl-C."""
    process = ServerProcess(tiny_folder, "--max-batch-size", "32", "--max-queue", "128")
    yield process
    assert process.stop() == 0


@pytest.fixture
def start_server(vlm):
    """Start a server with other settings: ``start_server(max_queue=1)``; stopped at the end of the test."""
    started = []

    def start(**over):
        s = BackgroundServer(create_app(vlm, settings(**over))).start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
