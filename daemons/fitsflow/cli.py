"""The ``fitsflow`` command: operators' and admins' entry point.

    fitsflow --version
    fitsflow config check [--config FILE] [--json] [--no-dirs] [--role ROLE]
    fitsflow status [-n N] [--json]
    fitsflow panic "TEXT" | --flush
    fitsflow oods ls|get [--image I] [--raft R] [--sensor S] [--obs-day D] [--json]
    fitsflow oods tag|untag [data ID options]
    fitsflow archive ls|get [data ID options]
    fitsflow dlq ls|show|replay|purge [IDS] [--queue Q] [--reason TEXT] [--image I] [--older-than S]
"""

from __future__ import annotations

import argparse
import json
import sys

from fitsflow import __version__
from fitsflow.core.config import DAEMON_NAMES, TOOL_ROLES, load_config, toml_value
from fitsflow.core.errors import EX_CONFIG, EX_OK, EX_SOFTWARE, ConfigError, FitsflowError

#: sysexits.h
EX_UNAVAILABLE, EX_IOERR = 69, 74


def _panic(args: argparse.Namespace) -> int:
    from fitsflow.core.panic import flush_panic_outbox, panic

    if args.flush:
        try:
            cfg = load_config(args.config, check_dirs=False, role="panic")
        except ConfigError as exc:
            print(f"fitsflow: configuration error: {exc}", file=sys.stderr)
            return EX_CONFIG
        print(f"{flush_panic_outbox(cfg)} panic(s) sent from the outbox")
        return EX_OK
    if not args.text:
        print("fitsflow panic: give the text of the panic (or --flush)", file=sys.stderr)
        return 2
    how = panic(" ".join(args.text), config=args.config)
    print(f"panic raised ({how})")
    return EX_OK if how == "broker" else 1


def _config_check(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, check_dirs=not args.no_dirs, role=args.role)
    except ConfigError as exc:
        print(f"fitsflow: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    described = cfg.describe()
    if args.json:
        json.dump(described, sys.stdout, indent=2)
        print()
    else:
        print(f"# {described.pop('source')}: valid")
        for section, values in described.items():
            print(f"\n[{section}]")
            for key, value in values.items():
                print(f"# {key} is not set" if value is None else f"{key} = {toml_value(value)}")
    return EX_OK


def _registry(args: argparse.Namespace, table: str):  # type: ignore[no-untyped-def]
    from fitsflow.core.ingest.registry import Registry  # SQLAlchemy only when needed

    cfg = load_config(args.config, check_dirs=False)
    return cfg, Registry(cfg.site.database_url, table)


def _data_id_filters(args: argparse.Namespace) -> dict[str, object]:
    return {"image": args.image, "raft": args.raft, "sensor": args.sensor, "obs_day": args.obs_day,
            "instrument": args.instrument}


def _oods_ls(args: argparse.Namespace) -> int:
    try:
        cfg, reg = _registry(args, args.table)
    except ConfigError as exc:
        print(f"fitsflow: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    repo = cfg.paths.resolved().oods_repo if args.table == "oods_files" else cfg.paths.resolved().archive_repo
    rows = list(reg.query(**_data_id_filters(args)))
    # The archive's files in Rucio (archive_ingest/rucio_book): state and DID per file.
    rucio: dict[str, tuple[str, str]] | None = None
    if args.table == "archive_files" and cfg.section("rucio").enabled:
        from fitsflow.archive_ingest.rucio_book import RucioBook

        book = RucioBook(reg.engine)
        rucio = book.by_path()
        book.close()
    reg.close()

    def in_rucio(path: str) -> tuple[str, str]:
        return rucio.get(path, ("not yet", "")) if rucio is not None else ("", "")

    if args.json:
        json.dump([{**e.data_id, "path": str(repo / e.path), "size": e.size, "checksum": e.checksum,
                    "ingested_at": e.ingested_at.isoformat(), "protected": e.protected,
                    **({"rucio": dict(zip(("state", "did"), in_rucio(e.path)))} if rucio is not None else {})}
                   for e in rows], sys.stdout, indent=1)
        print()
    elif args.get:
        if len(rows) != 1:
            print(f"fitsflow: {len(rows)} files match; a data ID names one (give --image, --raft, --sensor)",
                  file=sys.stderr)
            return 1
        print(repo / rows[0].path)
    else:
        for e in rows:
            d = e.data_id
            flag = " protected" if e.protected else ""
            state = f"  rucio:{in_rucio(e.path)[0].replace(' ', '-')}" if rucio is not None else ""
            print(f"{d['obs_day']}  {d['image']}  {d['raft']}_{d['sensor']}  {e.size:>10}  "
                  f"{e.ingested_at:%Y-%m-%dT%H:%M:%SZ}{flag}{state}  {repo / e.path}")
        print(f"# {len(rows)} file(s)", file=sys.stderr)
    return EX_OK


def _oods_tag(args: argparse.Namespace) -> int:
    filters = _data_id_filters(args)
    if not any(filters.values()) and not args.all:
        # A forgotten option must not protect (or release) every file of the repository.
        print(f"fitsflow oods {args.command_name}: give a data ID (--image, --obs-day, ...) or --all",
              file=sys.stderr)
        return 2
    cfg, reg = _registry(args, "oods_files")
    rows = list(reg.query(**filters))
    for e in rows:
        reg.set_protected(e.data_id, args.command_name == "tag")
    reg.close()
    print(f"{len(rows)} file(s) {'protected from' if args.command_name == 'tag' else 'released to'} expiry")
    return EX_OK


def _rucio_retry(args: argparse.Namespace) -> int:
    filters = _data_id_filters(args)
    if not any(filters.values()) and not args.all:
        print("fitsflow archive rucio-retry: give a data ID (--image, --obs-day, ...) or --all", file=sys.stderr)
        return 2
    from fitsflow.archive_ingest.rucio_book import RucioBook

    cfg = load_config(args.config, check_dirs=False)
    book = RucioBook(cfg.site.database_url)
    n = book.retry_set_aside(**filters)
    book.close()
    print(f"{n} file(s) set aside from Rucio will be registered again (the archive ingest's next look, <= 10 s)")
    return EX_OK


CONFIG_HELP = "configuration file (default: $FITSFLOW_CONFIG or /etc/fitsflow/fitsflow.toml)"


def _add_data_id_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help=CONFIG_HELP)
    for name, text in (("instrument", "instrument name (INSTRUME)"), ("image", "image name (IMGNAME)"),
                       ("raft", "raft (RAFTBAY), e.g. R22"), ("sensor", "sensor slot (CCDSLOT), e.g. S11")):
        p.add_argument(f"--{name}", help=f"only this {text}")
    p.add_argument("--obs-day", dest="obs_day", metavar="YYYYMMDD", help="only this observing day (OBSDAY)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fitsflow", description="fitsflow: observatory data backbone")
    parser.add_argument("--version", action="version", version=f"fitsflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = config_sub.add_parser("check", help="validate the configuration and print it resolved (secrets masked)")
    check.add_argument("--config", help="file to check (default: $FITSFLOW_CONFIG or /etc/fitsflow/fitsflow.toml)")
    check.add_argument("--json", action="store_true", help="print JSON instead of TOML-like text")
    check.add_argument("--no-dirs", action="store_true", help="skip the checks of the data directories")
    check.add_argument("--role", choices=sorted((*DAEMON_NAMES, *TOOL_ROLES)),
                       help="check as this broker identity would read it (resolves {role} in "
                            "bus.credentials_file and checks that file)")
    check.set_defaults(func=_config_check)

    from fitsflow import dlq, status
    status.add_parser(sub)
    dlq.add_parser(sub)

    p = sub.add_parser("panic", help="raise a panic (the on-call shifter is e-mailed)")
    p.add_argument("text", nargs="*", help="what happened, for the shifter's e-mail")
    p.add_argument("--config", help=CONFIG_HELP)
    p.add_argument("--flush", action="store_true", help="send panics waiting in this host's outbox")
    p.set_defaults(func=_panic)

    for area, table, what in (("oods", "oods_files", "the OODS"), ("archive", "archive_files", "the archive")):
        top = sub.add_parser(area, help=f"find files in {what} registry")
        top_sub = top.add_subparsers(dest=f"{area}_command", metavar="ACTION", required=True)
        ls = top_sub.add_parser("ls", help="list files by data ID (any part of it)")
        get = top_sub.add_parser("get", help="print the path of the one file of a data ID")
        for p, is_get in ((ls, False), (get, True)):
            _add_data_id_options(p)
            p.add_argument("--json", action="store_true", help="print JSON records")
            p.set_defaults(func=_oods_ls, table=table, get=is_get)
        if area == "archive":
            p = top_sub.add_parser("rucio-retry", help="register files set aside from Rucio again (after a person "
                                                       "fixed Rucio's entry or the file)")
            _add_data_id_options(p)
            p.add_argument("--all", action="store_true", help="every file set aside (no data ID given)")
            p.set_defaults(func=_rucio_retry)
        if area == "oods":
            for action, text in (("tag", "protect from expiry"), ("untag", "allow expiry again")):
                p = top_sub.add_parser(action, help=text)
                _add_data_id_options(p)
                p.add_argument("--all", action="store_true", help=f"{action} every file (no data ID given)")
                p.set_defaults(func=_oods_tag, command_name=action)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EX_OK
    # What an operator can cause or fix — a wrong file, an unreachable database, a full disk —
    # is one line naming it and an exit code; a traceback is kept for fitsflow's own bugs.
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"fitsflow: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except (FitsflowError, OSError) as exc:
        print(f"fitsflow {args.command}: {exc}", file=sys.stderr)
        return EX_SOFTWARE if isinstance(exc, FitsflowError) else EX_IOERR
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        sqlalchemy = sys.modules.get("sqlalchemy.exc")
        if sqlalchemy is not None and isinstance(exc, sqlalchemy.SQLAlchemyError):
            print(f"fitsflow {args.command}: database: {str(exc).splitlines()[0]}", file=sys.stderr)
            return EX_UNAVAILABLE
        raise


if __name__ == "__main__":
    sys.exit(main())
