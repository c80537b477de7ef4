"""trafmetuxd command line: argv -> config.load() -> live service or replay."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from trafmetuxd import __version__
from trafmetuxd.spec import Config

DEFAULT_CONFIG = "/etc/trafmetux/trafmetux.toml"
EXIT_CONFIG = 2
EXIT_FAILURE = 1


def build_parser() -> argparse.ArgumentParser:
    """The daemon's argument parser."""
    parser = argparse.ArgumentParser(
        prog="trafmetuxd", description="Exact per-monitor network traffic meter (NFQUEUE)."
    )
    parser.add_argument("--config", "-c", default=DEFAULT_CONFIG, help="TOML configuration file")
    parser.add_argument("--replay", metavar="CAPTURE", help="meter a pcap/pcapng file and exit")
    parser.add_argument(
        "--interface", default="", help="interface name the rules see during --replay"
    )
    parser.add_argument(
        "--serve", action="store_true", help="after --replay, serve the socket until SIGTERM"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="with --replay: meter the capture even if it was replayed into the store before",
    )
    parser.add_argument(
        "--import-sqlite",
        metavar="OLD_DB",
        help="copy a SQLite store's history into the configured PostgreSQL store (once) and exit",
    )
    parser.add_argument("--check", action="store_true", help="validate the configuration only")
    parser.add_argument(
        "--hash-password",
        action="store_true",
        help="read a password (from stdin, or asked on a terminal), print its bcrypt hash "
        "for http.password_hash",
    )
    parser.add_argument("--version", action="version", version=f"trafmetuxd {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the daemon; exit 2 on a bad configuration, 1 on another start-up failure."""
    args = build_parser().parse_args(argv)
    if args.hash_password:
        return _hash_password()
    for flag in ("serve", "force"):
        if getattr(args, flag) and not args.replay:
            print(f"trafmetuxd: --{flag} goes with --replay", file=sys.stderr)
            return EXIT_CONFIG
    from trafmetuxd import config, logs

    logs.setup()
    try:
        cfg = config.load(Path(args.config))
    except config.ConfigError as exc:
        print(f"trafmetuxd: invalid configuration:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check:
        print(f"{args.config}: OK ({len(cfg.monitors)} monitors)")
        if cfg.strict:
            from trafmetuxd.quota import STRICT_WARNING

            print(f"{args.config}: WARNING: {STRICT_WARNING}")
        return 0
    if args.import_sqlite:
        return _import(cfg, Path(args.import_sqlite))
    return _start(cfg, args)


def _import(cfg: Config, old: Path) -> int:
    """--import-sqlite: the history of `old` into the PostgreSQL store, as this gateway's."""
    if not cfg.store.postgresql:
        print(f"trafmetuxd: --import-sqlite: {cfg.path} has no [store] url (PostgreSQL) to "
              "import into", file=sys.stderr)  # fmt: skip
        return EXIT_CONFIG
    from trafmetuxd.pgimport import import_sqlite
    from trafmetuxd.pgstore import PgStore
    from trafmetuxd.store import StoreError

    store = PgStore(cfg.store)
    try:
        print(import_sqlite(store, old).line())
    except StoreError as exc:
        print(f"trafmetuxd: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        store.close()
    return 0


def _hash_password() -> int:
    """Print the bcrypt hash of a password read from the terminal or the first stdin line."""
    import getpass

    import bcrypt

    if sys.stdin.isatty():
        password = getpass.getpass("HTTP password: ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("trafmetuxd: --hash-password: empty password refused", file=sys.stderr)
        return EXIT_CONFIG
    print(bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode())
    return 0


def _start(cfg: Config, args: argparse.Namespace) -> int:
    from trafmetuxd.capture import CaptureError
    from trafmetuxd.kernel import KernelError
    from trafmetuxd.metering import Metering
    from trafmetuxd.notify import Notifier
    from trafmetuxd.pcap import CaptureFileError
    from trafmetuxd.replay import AlreadyReplayedError, replay_file, report_clock
    from trafmetuxd.service import Service
    from trafmetuxd.statedir import check
    from trafmetuxd.store import StoreError

    try:
        cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        check(cfg)  # nobody else may write where the daemon writes (symlinks: issue 11)
        metering = Metering(cfg)
        if not args.replay:
            # [capture] enabled = false: reporting only (the store and the socket, no queue)
            live = cfg.capture.enabled
            return asyncio.run(Service(metering, Notifier(), live=live).run())
        try:
            summary = replay_file(metering, Path(args.replay), args.interface, args.force)
        except AlreadyReplayedError as exc:
            metering.close()
            print(f"trafmetuxd: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        print(summary.line(), flush=True)
        if not args.serve:
            metering.close()
            return 0 if summary.flushed else EXIT_FAILURE
        # Reports answer as of the newest stored data, not the wall clock (docs/config.md).
        service = Service(metering, Notifier(), live=False, clock=report_clock(metering, summary))
        return asyncio.run(service.run())
    except (StoreError, CaptureError, KernelError, CaptureFileError, OSError) as exc:
        print(f"trafmetuxd: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
