"""``hspace serve``: a bank's directions as sliders in a browser, edits by a model loaded once (issue 20)."""

from __future__ import annotations

import argparse
import socket

from flows.cli_args import add_conditioning_arguments, add_precision_argument
from flows.cli_bank import add_verdict_arguments, bank_model, verdict_thresholds

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the ``hspace`` commands."""
    serve = commands.add_parser(
        "serve",
        help="a web page with a slider per bank direction and the edited image; POST /edit for programs",
        description="Serve a bank: GET / (the page), GET /directions (JSON), POST /edit (a PNG: JSON {seed, gammas} "
        "or a multipart form with an image and gammas), GET /healthz. The model and bank load once; one thread runs "
        "the U-Net, batching the edits that wait together.",
    )
    serve.add_argument("bank", help="the bank (path or fsspec URL)")
    serve.add_argument("--model", required=True, help="the model the bank was built for (name, folder or hub id)")
    serve.add_argument("--version", default="latest", help="the bank version (default: latest)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--device", default="cpu", help="cpu or cuda")
    add_conditioning_arguments(serve, edit_branch=True, default="the bank's")
    add_precision_argument(serve, default=None, note="(default: the bank's, so that no edit casts a copy)")
    serve.add_argument("--max-gamma", type=float, default=10.0, help="largest |gamma| a request may ask for")
    serve.add_argument("--max-directions", type=int, default=8, help="most directions in one edit")
    serve.add_argument("--max-upload-bytes", type=int, default=4_000_000, help="largest photo upload")
    serve.add_argument("--max-seed", type=int, default=2**31 - 1, help="largest seed a request may ask for")
    serve.add_argument("--queue", type=int, default=16, help="edits that may wait; more are refused with 503")
    serve.add_argument("--batch", type=int, default=8, help="most waiting edits the worker takes at once")
    add_verdict_arguments(serve)
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from flows.serve import Limits, make_app
    from hspace.bank import load_bank
    from hspace.editing import edit

    limits = Limits(
        max_gamma=args.max_gamma,
        max_directions=args.max_directions,
        max_upload_bytes=args.max_upload_bytes,
        max_seed=args.max_seed,
        queue=args.queue,
        batch=args.batch,
    )
    bank = load_bank(args.bank, args.version)
    model = bank_model(args, bank)  # a mismatch is refused here, in one line, rather than on every request
    if model.precision != bank.precision:
        print(
            f"hspace serve: the bank's directions were found in {bank.precision}, so every edit casts a copy of this "
            f"{model.precision} model to it: leave out --precision to load it in {bank.precision} once"
        )
    # One edit now: a bank whose timesteps this model's scheduler does not give is refused before serving, and
    # the first request does not pay for the warm-up.
    edit(model, [0], {}, bank)
    app = make_app(model, bank, limits, verdict_thresholds(args))
    listening = _listen(args.host, args.port)
    if args.host not in LOOPBACK:
        print(f"hspace serve: listening on {args.host}, reachable from other machines, without authentication")
    where = f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{args.port}/"
    print(f"serving bank {bank.url} version {bank.version} ({len(bank)} directions) at {where}", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[listening])


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, or a one-line error (uvicorn's own would exit after a log record)."""
    from hspace.errors import HSpaceError

    listening = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host, port))
    except (OSError, OverflowError) as error:
        listening.close()
        raise HSpaceError(f"cannot listen on {host} port {port} ({error}): choose another --host or --port") from None
    return listening
