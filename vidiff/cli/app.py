"""`vidiff app`: serve a web page (Gradio) to generate, edit, interpolate and upscale clips."""
from __future__ import annotations

import argparse
import importlib
import ipaddress
import socket
import sys

from vidiff.app.handlers import AppModels, check_out_dir
from vidiff.cli.common import CLIError, check_flag

EPILOG = """examples:
  vidiff app                                   (the built-in demo at http://127.0.0.1:7860)
  vidiff app --model models/sd15-video --port 8000
  vidiff app --cascade configs/cascade/demo.yaml --out-dir outputs/cascade-app

The page runs the same commands as the command line (generate, edit, interpolate, upscale) with the same checks;
each request writes a new clip, its GIF, contact sheet and JSON sidecar under --out-dir, never over a file.
It binds to 127.0.0.1: only this machine can open it. --host 0.0.0.0 opens it to the network (no login).
Needs gradio: pip install 'vidiff[app]'."""


def add_parser(sub, help_text: str):
    p = sub.add_parser("app", help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
                       description="Serve a web page over the vidiff commands, offline (no analytics, no share "
                                   "links).")
    p.add_argument("--model", metavar="DIR", default=None,
                   help="vidiff pipeline folder (a base) or cascade folder (default: the built-in demo)")
    p.add_argument("--cascade", metavar="YAML", default=None,
                   help="cascade YAML: generate runs it; its stages serve interpolate / upscale")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default: %(default)s)")
    p.add_argument("--out-dir", default="outputs/app", metavar="DIR",
                   help="folder of everything the page writes (default: %(default)s)")
    p.add_argument("--max-upload-mb", type=float, default=200, metavar="MB",
                   help="largest video the page accepts (default: %(default)s)")
    return p


def check_address(host: str, port: int) -> None:
    """`--host` / `--port` usable now (a free port this machine can listen on), so a busy port is one line
    before anything loads; a non-loopback host gets a warning (the page has no login)."""
    check_flag("port", port)
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: a port whose
            probe.bind((host, port))                                        # last connections linger is free
    except OSError as e:
        raise CLIError(f"cannot listen on {host}:{port} ({e.strerror or e}); pass another --port, or a --host "
                       "of this machine (default 127.0.0.1)") from None
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        loopback = host == "localhost"
    if not loopback:
        print(f"warning: --host {host}: the page is open to other machines on the network, without a login",
              file=sys.stderr)


def run(args) -> int:
    models = AppModels.resolve(args.model, args.cascade)
    check_flag("max_upload_mb", args.max_upload_mb)
    check_address(args.host, args.port)
    out_dir = check_out_dir(args.out_dir)
    try:  # gradio is an optional extra: imported when the page is served, so the rest of vidiff runs without it
        page = importlib.import_module("vidiff.app.page")
    except ModuleNotFoundError as e:
        if e.name != "gradio":
            raise
        raise CLIError("vidiff app needs gradio: pip install 'vidiff[app]'") from None
    print(f"vidiff app: serving at http://{args.host}:{args.port} (outputs in {out_dir}; Ctrl-C stops it)",
          file=sys.stderr)
    page.launch(models, out_dir, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb)
    return 0
