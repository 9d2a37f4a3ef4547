"""``kd-server``: the embedded Triton server under the supervisor, in the foreground.

Starts tritonserver 2.51 from the nvidia-pytriton wheel on a model repository (:mod:`serving.embedded`), restarts
it when it dies and heals a dead backend in place (:mod:`serving.supervisor`), with the liveness check of
:mod:`client.health`. ``triton_startup_script.sh start`` runs it in the background.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from serving.embedded import ADMIN_HEADER, RESTRICTED_APIS, TritonServer
from serving.supervisor import RestartPolicy, Supervisor, SupervisorConfig

_DEFAULTS = SupervisorConfig()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    """The ``kd-server`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="kd-server",
        description=(
            "Run Triton Inference Server 2.51 (from the nvidia-pytriton wheel) on a model repository, in the "
            "foreground, CPU-only, supervised: restarted when it dies, a dead backend reloaded in place. Models with "
            "platform onnxruntime_onnx or pytorch_libtorch run on Python-based stand-in backends, so the repository "
            "served by nvcr.io/nvidia/tritonserver:24.10-py3 works unchanged. Prints 'READY http://HOST:PORT "
            "grpc://HOST:PORT' each time every model is loaded; SIGTERM or SIGINT stops the server and the exit "
            "code is the server's (1 when the start budget is spent)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"),
                        help="model repository folder (<model>/config.pbtxt, <model>/<version>/...)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address the gRPC and metrics endpoints bind to (and HTTP, when it is loopback). "
                             "Anything but loopback restricts the repository, statistics, logging and trace APIs to "
                             "requests carrying the admin key (a random one is generated and printed unless "
                             "--admin-key is given) and keeps HTTP on 127.0.0.1 (see --http-host); inference itself "
                             "stays unauthenticated, so put a TLS proxy in front")
    parser.add_argument("--http-host", default=None,
                        help="address the HTTP endpoint binds to (default: --host when it is loopback, else "
                             "127.0.0.1: one KServe-v2 JSON request declaring a huge shape aborts Triton 2.51's HTTP "
                             "frontend, while gRPC refuses it; give --http-host 0.0.0.0 to expose HTTP anyway, "
                             "the supervisor then restarts the server after such a crash)")
    parser.add_argument("--admin-key", default=os.environ.get("KD_TRITON_ADMIN_KEY"),
                        help="key for the restricted APIs, sent as the 'admin-key' header "
                             "(default: $KD_TRITON_ADMIN_KEY)")
    parser.add_argument("--model-control", choices=["none", "explicit"], default=None,
                        help="'explicit' allows loading and unloading models through the (restricted) repository "
                             "API, e.g. to reload a re-exported model without a restart; healing in place needs it "
                             "(default: explicit when --health-interval > 0, with a key of the supervisor's own "
                             "that only guards the repository API unless --admin-key or a non-loopback --host "
                             "asks for more; none otherwise)")
    parser.add_argument("--grpc-cert", type=Path, default=None, help="PEM certificate: serve gRPC over TLS")
    parser.add_argument("--grpc-key", type=Path, default=None, help="PEM private key of --grpc-cert")
    parser.add_argument("--http-port", type=int, default=8000, help="HTTP/REST port (KServe v2 protocol)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (KServe v2 protocol)")
    parser.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port (/metrics)")
    parser.add_argument("--log-file", type=Path, default=None,
                        help="file the server log is appended to (default: a temporary file removed on exit; "
                             "its tail is printed when a start fails or the server crashes)")
    parser.add_argument("--timeout", type=float, default=_DEFAULTS.ready_timeout_sec,
                        help="seconds a start may take to become ready (a slower start counts as failed)")
    sup = parser.add_argument_group("supervision (named after systemd's Restart=, RestartSec=, StartLimitBurst=, "
                                    "StartLimitIntervalSec= and Kubernetes' liveness probe fields)")
    sup.add_argument("--restart", choices=[p.value for p in RestartPolicy], default=_DEFAULTS.restart.value,
                     help="restart tritonserver when it exits without being asked to: 'on-failure' after a non-zero "
                          "exit status or a signal (a crash), 'always' after any exit, 'no' never (kd-server then "
                          "exits with the server's status)")
    sup.add_argument("--restart-sec", type=float, default=_DEFAULTS.restart_sec,
                     help="seconds to wait before a restart; doubled for each restart within "
                          "--start-limit-interval-sec")
    sup.add_argument("--restart-max-sec", type=float, default=_DEFAULTS.restart_max_sec,
                     help="longest wait before a restart")
    sup.add_argument("--start-limit-burst", type=int, default=_DEFAULTS.start_limit_burst,
                     help="give up (exit 1, naming the models that failed to load) after this many failed starts "
                          "(the server exits or is not ready within --timeout) within --start-limit-interval-sec; "
                          "crashes of a server that was serving are always restarted")
    sup.add_argument("--start-limit-interval-sec", type=float, default=_DEFAULTS.start_limit_interval_sec,
                     help="window of the start budget and of the restart backoff")
    sup.add_argument("--health-interval", type=float, default=_DEFAULTS.health_interval_sec,
                     help="seconds between liveness checks: a real inference of each detector's stored validation "
                          "sample (kd-health); 0 turns them off")
    sup.add_argument("--health-timeout", type=float, default=_DEFAULTS.health_timeout_sec,
                     help="seconds one liveness request may take")
    sup.add_argument("--health-failures", type=int, default=_DEFAULTS.health_failures,
                     help="failed liveness checks in a row before tritonserver is restarted; a failure the check "
                          "pins on a model (a dead backend stub) has that model unloaded and loaded again at once")
    sup.add_argument("--stop-timeout", type=float, default=_DEFAULTS.stop_timeout_sec,
                     help="seconds a requested stop waits for tritonserver before killing it")
    sup.add_argument("--state-file", type=Path, default=None,
                     help="JSON file the supervisor keeps its state in (status, restarts, crashes, heals), for "
                          "triton_startup_script.sh status; none by default")
    return parser


def build_server(args: argparse.Namespace, config: SupervisorConfig) -> TritonServer:
    """The server the options describe: addresses, model control and the keys of the restricted APIs.

    Prints a generated admin key when the user needs one (explicit model control asked for, or a non-loopback
    ``--host``), and warns about what an exposed address exposes.
    """
    model_control = args.model_control or ("explicit" if config.health_interval_sec > 0 else "none")
    exposed = not _is_loopback(args.host)
    admin_key, restricted = args.admin_key, RESTRICTED_APIS
    if not admin_key and (args.model_control == "explicit" or exposed):
        admin_key = secrets.token_urlsafe(24)
        print(f"admin key for the restricted APIs (header '{ADMIN_HEADER}'): {admin_key}", flush=True)
    elif not admin_key and model_control == "explicit":
        # Only the supervisor reloads models: its key stays private and guards the repository API alone, so
        # statistics and logs on loopback stay as open as without supervision.
        admin_key, restricted = secrets.token_urlsafe(24), ("model-repository",)
    http_host = args.http_host or ("127.0.0.1" if exposed else args.host)
    if exposed:
        print(f"WARNING: binding gRPC and metrics to {args.host}: inference is unauthenticated; anyone who can reach "
              "this address can run models (the management APIs need the admin key)", file=sys.stderr)
    if not _is_loopback(http_host):
        print(f"WARNING: HTTP on {http_host}: one KServe-v2 JSON request declaring a huge shape aborts tritonserver "
              "2.51 (the supervisor restarts it) and a large one makes it allocate gigabytes; gRPC refuses both",
              file=sys.stderr)
    return TritonServer(
        args.model_repository,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        host=args.host,
        http_host=http_host,
        log_path=args.log_file,
        model_control=model_control,
        admin_key=admin_key,
        restricted_apis=restricted,
        grpc_tls=(args.grpc_cert, args.grpc_key) if args.grpc_cert else None,
    )


def supervisor_config(args: argparse.Namespace) -> SupervisorConfig:
    """The supervision options as a :class:`SupervisorConfig` (raises ``ValueError`` on a bad value)."""
    return SupervisorConfig(
        restart=args.restart, restart_sec=args.restart_sec, restart_max_sec=args.restart_max_sec,
        start_limit_burst=args.start_limit_burst, start_limit_interval_sec=args.start_limit_interval_sec,
        health_interval_sec=args.health_interval, health_timeout_sec=args.health_timeout,
        health_failures=args.health_failures, ready_timeout_sec=args.timeout, stop_timeout_sec=args.stop_timeout)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``kd-server`` command line.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        The server's exit code after a requested stop (128 + signal number if a signal ended it), or 1 if the
        start budget was spent.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.grpc_cert is None) != (args.grpc_key is None):
        parser.error("--grpc-cert and --grpc-key go together")
    try:
        config = supervisor_config(args)
    except ValueError as e:
        parser.error(str(e))
    server = build_server(args, config)
    health = None
    if config.health_interval_sec > 0:
        from client.health import CheckFailed, HealthCheck  # the liveness check is a client of the server

        try:
            health = HealthCheck(args.model_repository, server.http_url, timeout=config.health_timeout_sec)
        except CheckFailed as e:
            print(f"kd-server: liveness checks off: {e}", flush=True)
    supervisor = Supervisor(server, config, health=health, state_path=args.state_file)
    previous = {sig: signal.signal(sig, lambda signum, _frame: supervisor.request_stop(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return supervisor.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
